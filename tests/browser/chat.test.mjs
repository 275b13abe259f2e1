// The chat page in Chromium against the release binary and a fake LLM: sign-in, the
// conversation list, streaming, stop, failures, reconnects and token expiry, with a
// screenshot of each step (desktop and phone widths, light and dark).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import {
  PATIENCE_MS,
  artifactsDir,
  launchBrowser,
  mintToken,
  replyText,
  startFakeLlm,
  startService,
  tempDir,
  until,
} from './support.mjs';

const SECRET = 'browser-test-secret-key-0123456789';
const MODELS = ['fake-model', 'fake-model-large'];

let llm;
let service;
/** Services stopped during the run, whose logs are checked at the end too. */
const retired = [];
let serviceDir;
let context;
let page;
let shots;
let shotCount = 0;
/** Frames the page sent and received over its WebSocket. */
const sentFrames = [];
const receivedFrames = [];
/** Console errors and page errors; some steps expect a few and remove them. */
let consoleErrors = [];
/** Requests answered with an error status, as `status path`. */
const failedRequests = [];
/** Every token the tests used, none of which may appear in a log line. */
const tokens = [];

function token(claims) {
  const minted = mintToken(SECRET, claims);
  tokens.push(minted);
  return minted;
}

async function shot(name, on = page) {
  shotCount += 1;
  const file = `${String(shotCount).padStart(2, '0')}-${name}.png`;
  await on.screenshot({ path: join(shots, file) });
}

const waitOptions = { timeout: PATIENCE_MS };

/** Waits until the element matching `selector` has text that includes `text`. */
async function waitForText(selector, text) {
  await page.waitForFunction(
    ([s, t]) => [...document.querySelectorAll(s)].some((n) => n.textContent.includes(t)),
    [selector, text],
    waitOptions,
  );
}

async function visible(selector) {
  await page.locator(selector).first().waitFor({ state: 'visible', ...waitOptions });
}

async function hidden(selector) {
  await page.locator(selector).first().waitFor({ state: 'hidden', ...waitOptions });
}

async function texts(selector) {
  return page.locator(selector).allTextContents();
}

/** The REST API as the test user, to check what the page did. */
async function rest(path, bearer, init = {}) {
  return fetch(`${service.baseUrl}${path}`, {
    ...init,
    headers: { Authorization: `Bearer ${bearer}`, ...(init.headers || {}) },
  });
}

async function newConversation({ title, system, model }) {
  await page.click('#new-conversation');
  await visible('#new-dialog');
  await page.fill('#new-title', title);
  if (system) {
    await page.fill('#new-system', system);
  }
  if (model) {
    await page.selectOption('#new-model', model);
  }
  await page.click('#new-form button[type="submit"]');
  await hidden('#new-dialog');
  await waitForText('#conversation-title', title);
}

async function openFromList(title) {
  await page.locator('.conversation-item', { hasText: title }).click();
  await waitForText('#conversation-title', title);
}

/** Sends a message with the keyboard. */
async function send(text) {
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
}

/** The service's settings: the fake LLM, the known secret, the models to choose from. */
function serviceSettings() {
  return {
    AUTH_SECRET_KEY: SECRET,
    LLM_PROVIDER: 'openai',
    OPENAI_BASE_URL: llm.baseUrl,
    OPENAI_MODEL: MODELS[0],
    OPENAI_ALLOWED_MODELS: MODELS.join(','),
    // A failure is answered at once instead of after retries.
    OPENAI_MAX_RETRIES: '0',
  };
}

const aliceClaims = { sub: 'alice', roles: ['user'], expiresIn: 3600 };
let alice;

before(async () => {
  shots = artifactsDir();
  llm = await startFakeLlm({ delayMs: 100 });
  serviceDir = tempDir('chat-page-');
  service = await startService({ dir: serviceDir, settings: serviceSettings() });
  context = await launchBrowser(tempDir('chat-page-profile-'));
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (message) => {
    if (message.type() === 'error') {
      consoleErrors.push(message.text());
    }
  });
  page.on('pageerror', (error) => consoleErrors.push(`page error: ${error.message}`));
  page.on('response', (response) => {
    if (response.status() >= 400) {
      failedRequests.push(`${response.status()} ${new URL(response.url()).pathname}`);
    }
  });
  page.on('websocket', (socket) => {
    socket.on('framesent', ({ payload }) => sentFrames.push(JSON.parse(payload)));
    socket.on('framereceived', ({ payload }) => receivedFrames.push(JSON.parse(payload)));
  });
  alice = token(aliceClaims);
});

after(async () => {
  await context?.close();
  await service?.stop();
  await llm?.close();
});

test('the page is served with its security headers and / stays JSON', async () => {
  const response = await fetch(`${service.baseUrl}/chat`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/html/);
  const policy = response.headers.get('content-security-policy');
  assert.match(policy, /default-src 'none'; script-src 'self'; style-src 'self';/);
  assert.ok(policy.includes(`ws://127.0.0.1:${service.port}`), policy);
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(response.headers.get('referrer-policy'), 'no-referrer');
  const root = await fetch(`${service.baseUrl}/`);
  assert.match(root.headers.get('content-type'), /^application\/json/);
  assert.equal((await root.json()).service, 'chat-service');
});

test('signs in from a link and removes the token from the address bar', async () => {
  await page.goto(`${service.baseUrl}/chat#token=${alice}`);
  await waitForText('#who', 'Signed in as alice');
  await waitForText('#roles', 'user');
  await waitForText('#expiry', 'Token expires in');
  await page.waitForFunction(() => document.querySelector('#connection').dataset.state === 'open', null, waitOptions);
  assert.ok(!page.url().includes('token'), page.url());
  assert.equal(await page.evaluate(() => window.location.hash), '');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('chat-service.token')), alice);
  await waitForText('#list-status', 'No conversations yet.');
  await shot('signed-in-desktop-light');
});

test('creates a conversation with a system message and a model from the allowed list', async () => {
  await page.click('#new-conversation');
  await visible('#new-dialog');
  const options = await page.locator('#new-model option').evaluateAll((nodes) => nodes.map((n) => n.value));
  assert.deepEqual(options, ['', ...MODELS]);
  await shot('new-conversation-dialog');
  await page.click('#new-dialog [data-close]');
  await hidden('#new-dialog');

  await newConversation({
    title: 'Trip to Lisbon',
    system: 'Answer in one short paragraph.',
    model: MODELS[1],
  });
  await waitForText('.conversation-item', 'Trip to Lisbon');
  await waitForText('#conversation-meta', `model ${MODELS[1]}`);
  await waitForText('.message.system', 'Answer in one short paragraph.');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'message-input');
  await shot('conversation-created');
});

test('a reply streams in: partial text shows before it completes', async () => {
  await send('Hello there');
  await waitForText('.message.user .message-body', 'Hello there');
  // Part of the reply is on screen while it is still being written.
  const partial = await page.waitForFunction(() => {
    const body = document.querySelector('.message.streaming .message-body');
    return body && body.textContent.length > 0 ? body.textContent : null;
  }, null, waitOptions).then((handle) => handle.jsonValue());
  await shot('reply-streaming');
  await hidden('.message.streaming');
  const full = replyText('Hello there');
  const replies = await texts('.message.assistant .message-body');
  assert.deepEqual(replies, [full]);
  assert.ok(partial.length < full.length && full.startsWith(partial), `${partial} / ${full}`);
  // The conversation's model and system message reached the LLM.
  const request = llm.requests.at(-1);
  assert.equal(request.model, MODELS[1]);
  assert.equal(request.messages[0].role, 'system');
  assert.equal(request.messages[0].content, 'Answer in one short paragraph.');
  // Each message shows its time.
  assert.equal(await page.locator('.message.user time[datetime], .message.assistant time[datetime]').count(), 2);
  await shot('reply-complete');
});

test('Shift+Enter adds a line, Enter sends', async () => {
  await page.fill('#message-input', 'Tell me a LONG story');
  await page.press('#message-input', 'Shift+Enter');
  await page.type('#message-input', 'about boats');
  assert.equal(await page.inputValue('#message-input'), 'Tell me a LONG story\nabout boats');
  assert.equal(await page.locator('.message.user').count(), 1, 'Shift+Enter must not send');
});

test('Stop ends a reply mid-stream and the reply shows as stopped', async () => {
  await page.press('#message-input', 'Enter');
  await page.waitForFunction(
    () => document.querySelector('.message.streaming .message-body')?.textContent.includes('word2'),
    null,
    waitOptions,
  );
  await visible('#stop');
  await page.click('#stop');
  await visible('.message.assistant .badge.stopped');
  await hidden('#stop');
  const replies = await texts('.message.assistant .message-body');
  assert.equal(replies.length, 2);
  const full = replyText('Tell me a LONG story\nabout boats');
  assert.ok(replies[1].length > 0 && replies[1].length < full.length, replies[1]);
  assert.ok(full.startsWith(replies[1]), replies[1]);
  assert.ok(sentFrames.some((f) => f.type === 'stop_generation'));
  await shot('reply-stopped');
});

test('after a reload the history shows with times, the stopped reply still marked', async () => {
  await page.reload();
  await waitForText('#conversation-title', 'Trip to Lisbon');
  await page.waitForFunction(() => document.querySelectorAll('.message.assistant').length === 2, null, waitOptions);
  const roles = await page.locator('#messages .message').evaluateAll((nodes) => nodes.map((n) => n.className));
  assert.deepEqual(roles, [
    'message system',
    'message user',
    'message assistant',
    'message user',
    'message assistant',
  ]);
  const times = await page.locator('#messages .message time').evaluateAll(
    (nodes) => nodes.map((n) => ({ at: n.dateTime, text: n.textContent })),
  );
  assert.equal(times.length, 5);
  for (const time of times) {
    assert.ok(!Number.isNaN(Date.parse(time.at)) && time.text.length > 0, JSON.stringify(time));
  }
  assert.equal(await page.locator('.message.assistant .badge.stopped').count(), 1);
  assert.equal(await page.inputValue('#message-input'), '');
  await shot('history-after-reload');
});

test('an LLM failure shows as a readable notice in the conversation', async () => {
  await send('Please FAIL now');
  await visible('.notice.error');
  await waitForText('.notice.error', 'The AI service is unavailable');
  // The user's message was stored before the LLM was called, and still shows.
  await waitForText('.message.user .message-body', 'Please FAIL now');
  assert.equal(await page.locator('.message.streaming').count(), 0);
  assert.equal(await page.isEnabled('#send'), true);
  await shot('llm-failure-notice');
});

test('search finds conversations by title', async () => {
  await newConversation({ title: 'Grocery list' });
  await waitForText('#list-status', '2 conversations');
  // The most recently active comes first.
  assert.deepEqual(await texts('.conversation-item-title'), ['Grocery list', 'Trip to Lisbon']);
  await page.fill('#search', 'lisb');
  await page.waitForFunction(() => document.querySelectorAll('.conversation-item').length === 1, null, waitOptions);
  assert.deepEqual(await texts('.conversation-item-title'), ['Trip to Lisbon']);
  await waitForText('#list-status', 'matching “lisb”');
  await shot('search');
  await page.fill('#search', 'nothing like this');
  await waitForText('#list-status', 'No conversation matches');
  await page.fill('#search', '');
  await waitForText('#list-status', '2 conversations');
});

test('rename changes the title on the page and on the service', async () => {
  await openFromList('Grocery list');
  await page.click('#rename');
  await visible('#rename-dialog');
  await page.fill('#rename-title', 'Weekly groceries');
  await shot('rename-dialog');
  await page.press('#rename-title', 'Enter');
  await hidden('#rename-dialog');
  await waitForText('#conversation-title', 'Weekly groceries');
  await waitForText('.conversation-item-title', 'Weekly groceries');
  const list = await (await rest('/api/v1/users/me/conversations?search=Weekly', alice)).json();
  assert.deepEqual(list.map((c) => c.title), ['Weekly groceries']);
});

test('end and reopen a conversation', async () => {
  await page.click('#end');
  await visible('#ended-note');
  assert.equal(await page.isDisabled('#message-input'), true);
  await waitForText('.conversation-item .badge', 'ended');
  await shot('conversation-ended');
  await page.click('#reopen');
  await hidden('#ended-note');
  assert.equal(await page.isEnabled('#message-input'), true);
  await waitForText('#conversation-meta', 'Active');
});

test('exports as Markdown and JSON', async () => {
  await openFromList('Trip to Lisbon');
  const [markdown] = await Promise.all([page.waitForEvent('download', waitOptions), page.click('#export-md')]);
  assert.match(markdown.suggestedFilename(), /^conversation-.+\.md$/);
  const text = readFileSync(await markdown.path(), 'utf8');
  assert.ok(text.startsWith('# Trip to Lisbon'), text);
  assert.ok(text.includes('Hello there'), text);
  const [json] = await Promise.all([page.waitForEvent('download', waitOptions), page.click('#export-json')]);
  assert.match(json.suggestedFilename(), /^conversation-.+\.json$/);
  const exported = JSON.parse(readFileSync(await json.path(), 'utf8'));
  assert.equal(exported.title, 'Trip to Lisbon');
  // Two exchanges and the message the LLM failed to answer.
  assert.equal(exported.messages.filter((m) => m.role !== 'system').length, 5);
});

test('delete asks for confirmation first', async () => {
  await openFromList('Weekly groceries');
  const id = await page.locator('.conversation-item[aria-current="true"]').getAttribute('data-id');
  await page.click('#delete');
  await visible('#delete-dialog');
  await waitForText('#delete-dialog-text', 'Weekly groceries');
  await shot('delete-confirmation');
  await page.click('#delete-dialog [data-close]');
  await hidden('#delete-dialog');
  assert.equal((await rest(`/api/v1/users/me/conversations/${id}`, alice)).status, 200);
  await page.click('#delete');
  await page.click('#delete-form button[type="submit"]');
  await hidden('#delete-dialog');
  await visible('#empty-state');
  await page.waitForFunction(() => document.querySelectorAll('.conversation-item').length === 1, null, waitOptions);
  assert.equal((await rest(`/api/v1/users/me/conversations/${id}`, alice)).status, 404);
});

test('after a dropped connection the page reconnects and shows the reply the service stored', async () => {
  await openFromList('Trip to Lisbon');
  const question = 'Are you still there?';
  receivedFrames.length = 0;
  await send(question);
  await page.waitForFunction(
    () => document.querySelector('.message.streaming .message-body')?.textContent.length > 0,
    null,
    waitOptions,
  );
  // A graceful stop closes the socket (1001) and lets the reply finish and be stored.
  const port = service.port;
  await service.stop('SIGTERM');
  retired.push(service);
  await page.waitForFunction(() => document.querySelector('#connection').dataset.state !== 'open', null, waitOptions);
  await waitForText('#connection', 'retrying in');
  await shot('connection-lost');
  service = await startService({ dir: serviceDir, port, settings: serviceSettings() });
  await page.waitForFunction(() => document.querySelector('#connection').dataset.state === 'open', null, waitOptions);
  // The page asked to resume the reply it was showing after the last chunk it saw (chunks
  // without `seq` count as 0); a service that does not know the frame answers a failure,
  // which the page ignores, reading what was stored instead.
  const resume = await until(() => sentFrames.find((f) => f.type === 'resume'), 'a resume frame');
  const shown = receivedFrames.filter((f) => f.type === 'ai_response_chunk');
  assert.ok(shown.length > 0);
  assert.equal(resume.data.conversation_id, shown[0].data.conversation_id);
  assert.equal(resume.data.after_seq, Math.max(0, ...shown.map((f) => f.data.seq ?? 0)));
  await waitForText('.message.assistant .message-body', replyText(question));
  assert.equal(await page.locator('.message.streaming').count(), 0);
  const notices = await texts('.notice');
  assert.ok(!notices.some((n) => n.includes('Unknown message type')), notices.join('\n'));
  // Chat works on the new connection.
  await send('One more');
  await waitForText('.message.assistant .message-body', replyText('One more'));
  await shot('reconnected');
  // Connection errors of the restart are expected here.
  consoleErrors = consoleErrors.filter(
    (e) => !e.includes('WebSocket connection') && !e.includes('ERR_CONNECTION_REFUSED'),
  );
});

test('frames of the coming protocol: reply start, numbered chunks, tool calls, resume', async () => {
  // The service does not send these yet: a route in front of the page's socket plays them
  // and passes everything else through to the real service.
  const tab = await context.newPage();
  const resumes = [];
  let route = null;
  const toPage = (type, data) => route.socket.send(JSON.stringify({ type, data }));
  await tab.routeWebSocket(/\/ws\/chat\//, (socket) => {
    const server = socket.connectToServer();
    route = { socket, server };
    socket.onMessage((message) => {
      const frame = JSON.parse(message);
      if (frame.type === 'resume') {
        resumes.push(frame.data);
      } else {
        server.send(message);
      }
    });
  });
  await tab.goto(`${service.baseUrl}/chat#token=${alice}`);
  await tab.locator('.conversation-item', { hasText: 'Trip to Lisbon' }).click();
  await tab.waitForFunction(() => document.querySelector('#connection').dataset.state === 'open', null, waitOptions);
  const id = await tab.locator('.conversation-item[aria-current="true"]').getAttribute('data-id');
  const generation = { conversation_id: id, generation_id: 'gen-1' };
  const streaming = tab.locator('.message.streaming');
  const streamed = (text) => tab.waitForFunction(
    (t) => document.querySelector('.message.streaming .message-body')?.textContent === t,
    text,
    waitOptions,
  );

  toPage('ai_response_start', generation);
  toPage('tool_call', { ...generation, name: 'get_current_time', arguments: {} });
  await streaming.locator('.tool', { hasText: 'Calling get_current_time…' }).waitFor(waitOptions);
  await shot('tool-call', tab);
  toPage('tool_result', { ...generation, name: 'get_current_time', ok: true });
  await streaming.locator('.tool.done', { hasText: 'Called get_current_time' }).waitFor(waitOptions);
  toPage('ai_response_chunk', { ...generation, seq: 1, delta: 'It is ' });
  toPage('ai_response_chunk', { ...generation, seq: 2, delta: 'noon' });
  toPage('ai_response_chunk', { ...generation, seq: 2, delta: 'noon' });
  await streamed('It is noon');

  // The connection drops; the page comes back and asks for what follows chunk 2.
  const dropped = route;
  dropped.socket.close({ code: 1012, reason: 'restart' });
  dropped.server.close();
  const resume = await until(() => resumes[0], 'a resume frame');
  assert.deepEqual(resume, { conversation_id: id, after_seq: 2 });
  assert.notEqual(route, dropped);
  toPage('ai_response_chunk', { ...generation, seq: 2, delta: 'noon' });
  toPage('ai_response_chunk', { ...generation, seq: 3, delta: ' exactly.' });
  await streamed('It is noon exactly.');
  toPage('send_message', {
    conversation_id: id,
    ai_response: {
      id: 'aaaaaaaaaa',
      content: 'It is noon exactly.',
      timestamp: new Date().toISOString(),
      stopped: false,
    },
  });
  await streaming.waitFor({ state: 'detached', ...waitOptions });
  const last = tab.locator('.message.assistant').last();
  assert.equal(await last.locator('.message-body').textContent(), 'It is noon exactly.');
  await shot('coming-frames-done', tab);
  await tab.close();
});


test('a phone-width screen shows the list or the conversation, light and dark', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await waitForText('#conversation-title', 'Trip to Lisbon');
  await page.waitForFunction(() => document.querySelectorAll('.message.assistant').length >= 3, null, waitOptions);
  assert.equal(await page.isVisible('.sidebar'), false);
  assert.equal(await page.isVisible('#back'), true);
  await shot('phone-conversation-light');
  await page.emulateMedia({ colorScheme: 'dark' });
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, 'rgb(15, 18, 23)');
  await shot('phone-conversation-dark');
  await page.click('#back');
  await visible('.sidebar');
  assert.equal(await page.isVisible('#conversation'), false);
  await shot('phone-list-dark');
  await page.click('#new-conversation');
  await visible('#new-dialog');
  await shot('phone-new-dialog-dark');
  await page.keyboard.press('Escape');
  await hidden('#new-dialog');
  await page.setViewportSize({ width: 1280, height: 800 });
  await openFromList('Trip to Lisbon');
  await shot('desktop-conversation-dark');
  await page.emulateMedia({ colorScheme: 'light' });
});

test('the search box finds messages too and opens the conversation at the hit', async () => {
  // A long conversation, written through the API, with the words to find near its start.
  const created = await rest('/api/v1/users/me/conversations', alice, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ title: 'Cooking notes' }),
  });
  const { id } = await created.json();
  const contents = [];
  for (let i = 1; i <= 30; i += 1) {
    contents.push(i === 3 ? '🍲 Saffron risotto, as in the Café on the corner' : `Step ${i}: stir and wait a little longer.`);
  }
  let found;
  for (const content of contents) {
    const stored = await rest(`/api/v1/conversations/${id}/messages`, alice, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ role: 'user', content }),
    });
    assert.equal(stored.status, 201);
    const message = await stored.json();
    if (content.includes('Saffron')) {
      found = message.id;
    }
  }
  await openFromList('Trip to Lisbon');
  await page.fill('#search', 'saffron cafe');
  await waitForText('#message-hits-status', '1 message matching “saffron cafe”');
  await waitForText('#list-status', 'No conversation matches');
  assert.deepEqual(await texts('.search-hit-title'), ['Cooking notes']);
  assert.deepEqual(await texts('.search-hit mark'), ['Saffron', 'Café']);
  assert.equal(
    await page.locator('.search-hit-snippet').textContent(),
    '🍲 Saffron risotto, as in the Café on the corner',
  );
  await shot('search-message-hits');
  await page.click('.search-hit');
  await waitForText('#conversation-title', 'Cooking notes');
  await page.waitForFunction((expected) => document.querySelector('.message.found')?.dataset.id === expected, found, waitOptions);
  // The list starts at the bottom; the hit, near the top, is scrolled into view.
  const inView = await page.evaluate(() => {
    const list = document.getElementById('messages').getBoundingClientRect();
    const box = document.querySelector('.message.found').getBoundingClientRect();
    return box.top >= list.top && box.bottom <= list.bottom;
  });
  assert.ok(inView, 'the found message is in view');
  await shot('search-message-opened');

  // Searching by title still comes first; an emptied box hides the message hits.
  await page.fill('#search', 'cooking');
  await waitForText('#list-status', 'matching “cooking”');
  assert.deepEqual(await texts('.conversation-item-title'), ['Cooking notes']);
  await waitForText('#message-hits-status', 'No message matches “cooking”');
  await page.fill('#search', '');
  await hidden('#message-hits');
});

test('an expired or refused token brings back the sign-in form with the reason', async () => {
  // A token that expires while signed in.
  const shortLived = token({ sub: 'bob', roles: ['user'], expiresIn: 3 });
  await page.goto('about:blank');
  await page.goto(`${service.baseUrl}/chat#token=${shortLived}`);
  await waitForText('#who', 'Signed in as bob');
  await visible('#signin-form');
  await waitForText('#signin-reason', 'Your token expired');
  assert.equal(await page.isVisible('#app-view'), false);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('chat-service.token')), null);
  await shot('token-expired');

  // A link with a token that has already expired.
  const expired = token({ sub: 'bob', roles: ['user'], exp: Math.floor(Date.now() / 1000) - 3600 });
  await page.goto('about:blank');
  await page.goto(`${service.baseUrl}/chat#token=${expired}`);
  await waitForText('#signin-reason', 'Your token expired');

  // A token the service refuses (signed with another key): 401, and its reason.
  const forged = mintToken('another-secret', { sub: 'mallory', roles: ['admin'] });
  tokens.push(forged);
  await page.fill('#token-input', forged);
  await page.click('#signin-submit');
  await waitForText('#signin-reason', 'The service refused the token: Could not validate credentials');
  await shot('token-refused');

  // Pasting a good token signs in.
  await page.fill('#token-input', alice);
  await page.press('#signin-submit', 'Enter');
  await waitForText('#who', 'Signed in as alice');
  // A link opened in the same tab switches to its token.
  const carol = token({ sub: 'carol', roles: ['user'] });
  await page.goto(`${service.baseUrl}/chat#token=${carol}`);
  await waitForText('#who', 'Signed in as carol');
  assert.equal(await page.evaluate(() => window.location.hash), '');
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.click('#sign-out');
  await waitForText('#signin-reason', 'Signed out.');
  await shot('signin-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  consoleErrors = consoleErrors.filter((e) => !e.includes('401'));
});

test('a user with a budget sees the tokens left, and a refused message stays with when to send again', async () => {
  const dora = token({ sub: 'dora', roles: ['user'], expiresIn: 3600 });
  const root = token({ sub: 'root', roles: ['admin'], expiresIn: 3600 });
  assert.equal((await rest('/api/v1/users/me', dora)).status, 200);
  const set = await rest('/api/v1/admin/users/dora/limits', root, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ tokens_per_day: 1 }),
  });
  assert.equal(set.status, 200);
  await page.goto('about:blank');
  await page.goto(`${service.baseUrl}/chat#token=${dora}`);
  await waitForText('#who', 'Signed in as dora');
  await waitForText('#standing', '1 of 1 tokens left today');
  await newConversation({ title: 'On a budget' });
  await send('Spend it');
  await waitForText('.message.assistant .message-body', replyText('Spend it'));
  await waitForText('#standing', '0 of 1 tokens left today');
  await send('One more');
  await waitForText('.notice.error', 'Your daily token budget is spent');
  await waitForText('.notice.error', 'you can send again at');
  assert.equal(await page.inputValue('#message-input'), 'One more');
  // Nothing of the refused message was stored.
  assert.equal(await page.locator('.message.user').count(), 1);
  await shot('budget-refused');
  await page.click('#sign-out');
  await waitForText('#signin-reason', 'Signed out.');
});

test('the start banner prints a link that signs in as admin', async () => {
  const dir = tempDir('chat-page-banner-');
  const unconfigured = await startService({ dir, settings: { LLM_PROVIDER: 'echo' } });
  try {
    const link = await until(
      () => /http:\/\/127\.0\.0\.1:\d+\/chat#token=[\w.-]+/.exec(unconfigured.output)?.[0],
      'the link in the banner',
    );
    assert.ok(link.startsWith(`${unconfigured.baseUrl}/chat#token=`), link);
    const adminToken = link.split('#token=')[1];
    assert.ok(unconfigured.output.includes(`\n${adminToken}\n`), 'the token itself is printed too');
    await page.goto('about:blank');
    await page.goto(link);
    await waitForText('#who', 'Signed in as admin');
    await waitForText('#roles', 'admin');
    assert.ok(!page.url().includes('token'));
    // The token never reaches a log line (the banner is printed, not logged).
    for (const line of unconfigured.logLines()) {
      assert.ok(!line.includes(adminToken), line);
    }
    await page.click('#sign-out');
  } finally {
    await unconfigured.stop();
  }
});

test('no token reached the logs and the page broke no rule of its policy', async () => {
  const lines = [service, ...retired].flatMap((s) => s.logLines());
  assert.ok(lines.length > 0);
  for (const line of lines) {
    for (const used of tokens) {
      assert.ok(!line.includes(used), `a token in the log: ${line}`);
    }
  }
  assert.deepEqual(consoleErrors, [], failedRequests.join('\n'));
});
