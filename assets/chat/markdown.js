// Replies as Markdown, safely: `marked` turns the text into HTML in which raw HTML is shown as
// text and only http(s) and mailto links become links, then DOMPurify keeps only the tags and
// attributes Markdown needs (so nothing a model writes can run or load), and the result gets
// copy buttons on its code blocks, highlighted by Highlight.js when their language is named.
// The libraries are vendored under assets/vendor/.

import hljs from './vendor/highlight.min.js';
import { Marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.mjs';

/** Links and images that may be followed: nothing that runs or embeds (javascript:, data:). */
const SAFE_URL = /^(?:https?:|mailto:)/i;

const ALLOWED_TAGS = [
  'a', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr',
  'li', 'ol', 'p', 'pre', 'strong', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul',
  'input',
];
const ALLOWED_ATTR = ['href', 'title', 'class', 'start', 'align', 'type', 'checked', 'disabled'];

function escapeHtml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

const marked = new Marked({
  gfm: true,
  // A single newline stays a newline in the text, shown as a line break by the page's style.
  breaks: false,
  renderer: {
    // Raw HTML, block or inline, is shown as the text it is.
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text.trim())}</p>` : escapeHtml(text);
    },
    link({ href, title, tokens }) {
      const text = this.parser.parseInline(tokens);
      if (!SAFE_URL.test(href ?? '')) {
        return text;
      }
      const titled = title ? ` title="${escapeHtml(title)}"` : '';
      return `<a href="${escapeHtml(href)}"${titled}>${text}</a>`;
    },
    // Images would load from anywhere (and the page's policy blocks them): a link instead.
    image({ href, text }) {
      const label = escapeHtml(text || href || 'image');
      if (!SAFE_URL.test(href ?? '')) {
        return label;
      }
      return `<a href="${escapeHtml(href)}">${label}</a>`;
    },
  },
});

const purifier = DOMPurify(window);
const MARKDOWN_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};
/** Highlighted code is only spans with classes. */
const HIGHLIGHT_CONFIG = {
  ALLOWED_TAGS: ['span'],
  ALLOWED_ATTR: ['class'],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};
/** Longer code is shown plain: highlighting it on every render would cost too much. */
const MAX_HIGHLIGHT_CHARS = 20000;

/** Colours the code of a block in a language Highlight.js knows. */
function highlight(code, language) {
  const text = code.textContent;
  if (!language || !hljs.getLanguage(language) || text.length > MAX_HIGHLIGHT_CHARS) {
    return;
  }
  const { value } = hljs.highlight(text, { language, ignoreIllegals: true });
  code.replaceChildren(purifier.sanitize(value, HIGHLIGHT_CONFIG));
  code.classList.add('hljs');
}

/** Copies `text`, with the older way where the Clipboard API is not offered (plain HTTP). */
async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'visually-hidden';
  document.body.append(area);
  area.select();
  const copied = document.execCommand('copy');
  area.remove();
  if (!copied) {
    throw new Error('copy refused');
  }
}

/** Wraps a `<pre>` in a block with its language and a copy button. */
function codeBlock(pre) {
  const code = pre.querySelector('code');
  const language = [...(code?.classList ?? [])]
    .find((c) => c.startsWith('language-'))
    ?.slice('language-'.length);
  const block = document.createElement('div');
  block.className = 'code-block';
  const bar = document.createElement('div');
  bar.className = 'code-bar';
  const label = document.createElement('span');
  label.className = 'code-language';
  label.textContent = language || 'code';
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'copy-code secondary';
  button.textContent = 'Copy';
  button.setAttribute('aria-label', `Copy ${language || 'the'} code`);
  button.addEventListener('click', async () => {
    try {
      await copyText((code ?? pre).textContent);
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 1500);
  });
  bar.append(label, button);
  if (code) {
    highlight(code, language);
  }
  pre.replaceWith(block);
  block.append(bar, pre);
}

/** The nodes of a Markdown text, sanitized, links opening apart, code blocks copyable. */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ''), { async: false }).trim();
  const fragment = purifier.sanitize(html, MARKDOWN_CONFIG);
  for (const link of fragment.querySelectorAll('a')) {
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
  }
  for (const input of fragment.querySelectorAll('input')) {
    // Only the task-list boxes of GFM, shown and never sent.
    if (input.type !== 'checkbox') {
      input.remove();
    } else {
      input.disabled = true;
    }
  }
  for (const pre of fragment.querySelectorAll('pre')) {
    codeBlock(pre);
  }
  return fragment;
}
