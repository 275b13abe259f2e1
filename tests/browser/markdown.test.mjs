// Replies as Markdown on the chat page, in Chromium against the binary and a fake LLM of this
// file's own: what renders (code blocks with a copy button, tables, lists, links that open
// apart), what must never run (raw HTML, javascript: and data: links), how often a streaming
// reply is rendered, and a title written by the service showing up live.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import {
  PATIENCE_MS,
  launchBrowser,
  mintToken,
  startFakeLlm,
  startService,
  tempDir,
} from './support.mjs';

const SECRET = 'browser-markdown-secret-0123456789';
const TITLE = 'Bread Baking Basics';

const MARKDOWN = [
  '## Steps',
  '',
  'Some *emphasis*, **strong** text and `inline code`.',
  '',
  '- flour',
  '- water',
  '- salt',
  '',
  '1. mix',
  '2. bake',
  '',
  '> rest the dough',
  '',
  '| item | grams |',
  '|:-----|------:|',
  '| flour | 500 |',
  '| water | 350 |',
  '',
  'See [the guide](https://example.com/guide) or [write](mailto:baker@example.com).',
  '',
  '```js',
  'const loaf = bake("flour", 230);',
  'console.log(loaf);',
  '```',
].join('\n');

// Each would set `window.pwned` if anything of it ran.
const PAYLOADS = [
  'Payloads follow.',
  '',
  '<img src=x onerror="window.pwned = \'img\'">',
  '',
  '<script>window.pwned = "script"</script>',
  '',
  'Inline <b onmouseover="window.pwned = \'b\'">bold</b> and <iframe src="javascript:window.pwned=\'iframe\'"></iframe>',
  '',
  '[x](javascript:window.pwned=%27link%27) and [d](data:text/html;base64,PHNjcmlwdD53aW5kb3cucHduZWQ9MTwvc2NyaXB0Pg==)',
  '',
  '<a href="javascript:window.pwned=\'anchor\'">anchor</a> ![i](javascript:window.pwned=1) [JS](JaVaScRiPt:window.pwned=2)',
  '',
  '<svg onload="window.pwned = \'svg\'"></svg><style>body { display: none }</style>',
  '',
  '```html',
  '<img src=x onerror="window.pwned = \'code\'"><script>window.pwned = "code"</script>',
  '```',
].join('\n');

/** What the fake answers: a title, Markdown, payloads, many words, or a plain reply. */
function answerTo(body, user) {
  if (body.messages[0]?.content?.startsWith('You name conversations')) {
    return `"${TITLE}."`;
  }
  if (user.includes('MARKDOWN')) {
    return MARKDOWN;
  }
  if (user.includes('PAYLOADS')) {
    return PAYLOADS;
  }
  if (user.includes('MANY')) {
    return Array.from({ length: 200 }, (_, i) => `w${i}`).join(' ');
  }
  return 'Knead, rest and bake at 230 °C.';
}

/** The answer in pieces of four characters. */
function pieces(body, user) {
  const text = answerTo(body, user);
  return Array.from({ length: Math.ceil(text.length / 4) }, (_, i) => text.slice(i * 4, i * 4 + 4));
}

let llm;
let service;
let context;
let page;
let shots;
const consoleErrors = [];
const receivedFrames = [];
const waitOptions = { timeout: PATIENCE_MS };

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`) });
}

async function newConversation(title) {
  await page.click('#new-conversation');
  await page.locator('#new-dialog').waitFor({ state: 'visible', ...waitOptions });
  await page.fill('#new-title', title);
  await page.click('#new-form button[type="submit"]');
  await page.locator('#new-dialog').waitFor({ state: 'hidden', ...waitOptions });
}

/** Sends `text` and waits for its reply to be stored and shown; the reply's body. */
async function chat(text) {
  const before = await page.locator('.message.assistant').count();
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
  await page.waitForFunction(
    (n) => document.querySelectorAll('.message.assistant:not(.streaming)').length > n
      && !document.querySelector('.message.streaming'),
    before,
    waitOptions,
  );
  return page.locator('.message.assistant .message-body').last();
}

before(async () => {
  shots = join(process.env.BROWSER_ARTIFACTS_DIR || join(tempDir('shots-'), 'out'), 'markdown');
  mkdirSync(shots, { recursive: true });
  llm = await startFakeLlm({ delayMs: 10, answer: pieces });
  service = await startService({
    dir: tempDir('chat-markdown-'),
    settings: {
      AUTH_SECRET_KEY: SECRET,
      LLM_PROVIDER: 'openai',
      OPENAI_BASE_URL: llm.baseUrl,
      OPENAI_MODEL: 'fake-model',
    },
  });
  context = await launchBrowser(tempDir('chat-markdown-profile-'));
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: service.baseUrl });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
  page.on('websocket', (socket) => {
    socket.on('framereceived', ({ payload }) => receivedFrames.push(JSON.parse(payload)));
  });
  // Anything the page's policy blocks is recorded: a payload that tried to run would be.
  await page.addInitScript(() => {
    window.violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const token = mintToken(SECRET, { sub: 'mara', roles: ['user'] });
  await page.goto(`${service.baseUrl}/chat#token=${token}`);
  await page.waitForFunction(() => document.querySelector('#connection').dataset.state === 'open', null, waitOptions);
});

after(async () => {
  await context?.close();
  await service?.stop();
  await llm?.close();
});

test('a reply renders as Markdown: headings, lists, a table, links that open apart, code to copy', async () => {
  await newConversation('Markdown');
  const body = await chat('Show me MARKDOWN please');
  await shot('markdown-reply');
  assert.equal(await body.locator('h2').textContent(), 'Steps');
  assert.equal(await body.locator('em').textContent(), 'emphasis');
  assert.equal(await body.locator('strong').textContent(), 'strong');
  assert.equal(await body.locator('p > code').textContent(), 'inline code');
  assert.deepEqual(await body.locator('ul > li').allTextContents(), ['flour', 'water', 'salt']);
  assert.deepEqual(await body.locator('ol > li').allTextContents(), ['mix', 'bake']);
  assert.equal((await body.locator('blockquote').textContent()).trim(), 'rest the dough');
  assert.deepEqual(await body.locator('table th').allTextContents(), ['item', 'grams']);
  assert.deepEqual(await body.locator('table td').allTextContents(), ['flour', '500', 'water', '350']);

  const links = await body.locator('a').evaluateAll((nodes) => nodes.map((a) => ({
    href: a.getAttribute('href'), target: a.target, rel: a.rel, text: a.textContent,
  })));
  assert.deepEqual(links, [
    { href: 'https://example.com/guide', target: '_blank', rel: 'noopener noreferrer', text: 'the guide' },
    { href: 'mailto:baker@example.com', target: '_blank', rel: 'noopener noreferrer', text: 'write' },
  ]);

  const code = 'const loaf = bake("flour", 230);\nconsole.log(loaf);\n';
  const block = body.locator('.code-block');
  assert.equal(await block.locator('.code-language').textContent(), 'js');
  assert.equal(await block.locator('pre > code.language-js').textContent(), code);
  // Highlighted: `const` is a keyword, the string a string.
  assert.equal(await block.locator('code .hljs-keyword').first().textContent(), 'const');
  assert.equal(await block.locator('code .hljs-string').first().textContent(), '"flour"');
  await block.locator('button.copy-code').click();
  await page.waitForFunction(() => document.querySelector('.copy-code').textContent === 'Copied', null, waitOptions);
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), code);
  // The user's own message stays plain text.
  assert.equal(await page.locator('.message.user .message-body').last().textContent(), 'Show me MARKDOWN please');
});

test('nothing a reply holds can run: raw HTML is text, javascript: and data: links are not links', async () => {
  const body = await chat('Send the PAYLOADS');
  await shot('payloads');
  const found = await body.evaluate((node) => ({
    elements: node.querySelectorAll('img, script, iframe, svg, style, object, embed, b, [onerror], [onload], [onmouseover]').length,
    hrefs: [...node.querySelectorAll('a')].map((a) => a.getAttribute('href')),
    text: node.textContent,
  }));
  assert.equal(found.elements, 0);
  assert.deepEqual(found.hrefs, []);
  // The HTML is shown as the text it is; the unsafe links keep their words.
  assert.ok(found.text.includes('<img src=x onerror='), found.text);
  assert.ok(found.text.includes('<script>window.pwned = "script"</script>'), found.text);
  assert.ok(found.text.includes('x and d'), found.text);
  // In a highlighted code block too the HTML is text.
  assert.ok(found.text.includes('<img src=x onerror="window.pwned = \'code\'">'), found.text);
  // Hovering and clicking everything in it does nothing either.
  for (const node of await body.locator('p').all()) {
    await node.hover();
    await node.click();
  }
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.deepEqual(await page.evaluate(() => window.violations), []);
  assert.ok(await page.locator('body').isVisible());
});

test('a streaming reply is rendered a few times a second, not once per chunk', async () => {
  let most = 0;
  await page.fill('#message-input', 'Say MANY words');
  await page.press('#message-input', 'Enter');
  // Sample the count of renders until the reply is stored.
  const until = Date.now() + PATIENCE_MS;
  let seen = false;
  while (Date.now() < until) {
    const renders = await page.evaluate(() => document.querySelector('.message.streaming')?.dataset.renders);
    if (renders !== undefined) {
      seen = true;
      most = Math.max(most, Number(renders));
    } else if (seen) {
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const reply = llm.requests.at(-1);
  assert.ok(reply.messages.at(-1).content.includes('MANY'));
  // 889 characters in pieces of 4, 10 ms apart: 223 chunks in over 2 s.
  const chunks = receivedFrames.filter((f) => f.type === 'ai_response_chunk'
    && f.data.generation_id === receivedFrames.findLast((s) => s.type === 'ai_response_start').data.generation_id).length;
  assert.equal(chunks, 223);
  assert.ok(most >= 2 && most <= chunks / 8, `${most} renders for ${chunks} chunks`);
  const words = await page.locator('.message.assistant .message-body').last().textContent();
  assert.ok(words.startsWith('w0 w1') && words.trim().endsWith('w199'), words);
});

test('a title written by the service shows in the header and the list as it comes', async () => {
  await page.click('#new-conversation');
  await page.locator('#new-dialog').waitFor({ state: 'visible', ...waitOptions });
  await page.click('#new-form button[type="submit"]');
  await page.locator('#new-dialog').waitFor({ state: 'hidden', ...waitOptions });
  await page.waitForFunction(() => document.querySelector('#conversation-title').textContent === 'New Conversation', null, waitOptions);
  const frames = receivedFrames.length;
  await chat('How do I bake bread?');
  await page.waitForFunction((t) => document.querySelector('#conversation-title').textContent === t, TITLE, waitOptions);
  await page.waitForFunction(
    (t) => document.querySelector('.conversation-item[aria-current="true"] .conversation-item-title')?.textContent === t,
    TITLE,
    waitOptions,
  );
  const updated = receivedFrames.slice(frames).find((f) => f.type === 'conversation_updated');
  assert.equal(updated?.data.title, TITLE);
  await shot('titled');
});

test('the page broke no rule of its policy and logged no error', async () => {
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(await page.evaluate(() => window.violations), []);
});
