// The message hits of the list's search box: a hit's snippet with its matched words marked,
// built from text nodes (the snippet is plain text, never HTML).

/**
 * The nodes of a snippet with `<mark>` around each highlight. The ranges count UTF-16 code
 * units, as JavaScript's string indexes do, so `slice` cuts them as they are.
 */
export function snippetNodes(snippet, highlights) {
  const nodes = [];
  let at = 0;
  const ranges = [...highlights].sort((a, b) => a.start - b.start);
  for (const { start, end } of ranges) {
    if (start < at || end > snippet.length || end <= start) {
      continue;
    }
    if (start > at) {
      nodes.push(document.createTextNode(snippet.slice(at, start)));
    }
    const mark = document.createElement('mark');
    mark.textContent = snippet.slice(start, end);
    nodes.push(mark);
    at = end;
  }
  if (at < snippet.length) {
    nodes.push(document.createTextNode(snippet.slice(at)));
  }
  return nodes;
}

/** A list item for a message hit; `open(hit)` runs when it is chosen. */
export function hitElement(hit, open) {
  const item = document.createElement('li');
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'search-hit';
  button.dataset.message = hit.message_id;
  const title = document.createElement('span');
  title.className = 'search-hit-title';
  title.textContent = hit.conversation_title;
  const text = document.createElement('span');
  text.className = 'search-hit-snippet';
  text.append(...snippetNodes(hit.snippet, hit.highlights));
  button.append(title, text);
  button.addEventListener('click', () => open(hit));
  item.append(button);
  return item;
}
