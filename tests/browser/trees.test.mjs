// The branches of a conversation on the chat page, in Chromium against the binary and a
// fake LLM: regenerating a reply, editing a message in place, and the "< 2/3 >" switcher.

import assert from 'node:assert/strict';
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
} from './support.mjs';

const SECRET = 'browser-test-secret-key-trees-0123456789';

let llm;
let service;
let context;
let page;
let shots;
let shotCount = 0;
let alice;
let conversationId;
const sentFrames = [];
let consoleErrors = [];

const waitOptions = { timeout: PATIENCE_MS };

async function shot(name) {
  shotCount += 1;
  await page.screenshot({ path: join(shots, `trees-${String(shotCount).padStart(2, '0')}-${name}.png`) });
}

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

async function rest(path) {
  const response = await fetch(`${service.baseUrl}${path}`, {
    headers: { Authorization: `Bearer ${alice}` },
  });
  assert.equal(response.status, 200, path);
  return response.json();
}

/** The messages of every branch, oldest first. */
async function tree() {
  return rest(`/api/v1/conversations/${conversationId}/messages?view=tree`);
}

before(async () => {
  shots = artifactsDir();
  llm = await startFakeLlm({ delayMs: 40 });
  service = await startService({
    dir: tempDir('chat-trees-'),
    settings: {
      AUTH_SECRET_KEY: SECRET,
      LLM_PROVIDER: 'openai',
      OPENAI_BASE_URL: llm.baseUrl,
      OPENAI_MODEL: 'fake-model',
      OPENAI_MAX_RETRIES: '0',
    },
  });
  context = await launchBrowser(tempDir('chat-trees-profile-'));
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (message) => {
    if (message.type() === 'error') {
      consoleErrors.push(message.text());
    }
  });
  page.on('pageerror', (error) => consoleErrors.push(`page error: ${error.message}`));
  page.on('websocket', (socket) => {
    socket.on('framesent', ({ payload }) => sentFrames.push(JSON.parse(payload)));
  });
  alice = mintToken(SECRET, { sub: 'alice', roles: ['user'], expiresIn: 3600 });
});

after(async () => {
  await context?.close();
  await service?.stop();
  await llm?.close();
});

test('a first exchange shows no switcher', async () => {
  await page.goto(`${service.baseUrl}/chat#token=${alice}`);
  await page.waitForFunction(() => document.querySelector('#connection').dataset.state === 'open', null, waitOptions);
  await page.click('#new-conversation');
  await visible('#new-dialog');
  await page.fill('#new-title', 'Branches');
  await page.click('#new-form button[type="submit"]');
  await hidden('#new-dialog');
  await waitForText('#conversation-title', 'Branches');
  await page.fill('#message-input', 'First question');
  await page.press('#message-input', 'Enter');
  await waitForText('.message.assistant .message-body', replyText('First question'));
  await hidden('.message.streaming');
  conversationId = (await rest('/api/v1/users/me/conversations'))[0].id;
  assert.equal(await page.locator('.branches').count(), 0);
  assert.equal(await page.locator('.message.assistant .regenerate').count(), 1);
  assert.equal(await page.locator('.message.user .edit').count(), 1);
});

test('regenerate writes another reply beside the first, with a 2/2 switcher', async () => {
  const asked = llm.requests.length;
  const first = (await tree()).find((m) => m.role === 'assistant');
  await page.click('.message.assistant .regenerate');
  // The new reply streams where the old one was.
  await visible('.message.streaming');
  assert.equal(await page.locator('.message.assistant:not(.streaming)').count(), 0);
  await hidden('.message.streaming');
  await waitForText('.message.assistant .branch-position', '2/2');
  assert.deepEqual(await texts('.message.assistant .message-body'), [replyText('First question')]);
  const frame = sentFrames.find((f) => f.type === 'regenerate');
  assert.equal(frame.data.message_id, first.id);
  assert.equal(llm.requests.length, asked + 1);
  // The LLM saw the path up to the question, not the earlier reply.
  assert.deepEqual(llm.requests.at(-1).messages.map((m) => m.content), ['First question']);
  const all = await tree();
  assert.deepEqual(all.map((m) => m.role), ['user', 'assistant', 'assistant']);
  await shot('regenerated');
});

test('the switcher flips between the replies', async () => {
  const [, first, second] = await tree();
  await page.click('.message.assistant .branch-prev');
  await waitForText('.message.assistant .branch-position', '1/2');
  const shown = await page.locator('.message.assistant').getAttribute('data-id');
  assert.equal(shown, first.id);
  assert.equal(await page.isDisabled('.message.assistant .branch-prev'), true);
  const conversation = await rest(`/api/v1/users/me/conversations/${conversationId}`);
  assert.equal(conversation.current_message_id, first.id);
  await page.click('.message.assistant .branch-next');
  await waitForText('.message.assistant .branch-position', '2/2');
  assert.equal(await page.locator('.message.assistant').getAttribute('data-id'), second.id);
});

test('edit opens the text in place; Escape cancels, Enter sends a new branch', async () => {
  await page.click('.message.user .edit');
  await visible('.message.user .edit-input');
  assert.equal(await page.inputValue('.message.user .edit-input'), 'First question');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'edit-input');
  await shot('editing');
  await page.press('.message.user .edit-input', 'Escape');
  await hidden('.edit-input');
  assert.deepEqual(await texts('.message.user .message-body'), ['First question']);

  await page.click('.message.user .edit');
  await page.fill('.message.user .edit-input', 'Better question');
  await page.press('.message.user .edit-input', 'Enter');
  await waitForText('.message.user .message-body', 'Better question');
  await hidden('.message.streaming');
  await waitForText('.message.assistant .message-body', replyText('Better question'));
  await waitForText('.message.user .branch-position', '2/2');
  // The new branch has one reply: no switcher on it.
  assert.equal(await page.locator('.message.assistant .branches').count(), 0);
  assert.deepEqual(await texts('.message.user .message-body'), ['Better question']);
  assert.ok(sentFrames.some((f) => f.type === 'edit_message' && f.data.content === 'Better question'));
  assert.equal((await tree()).length, 5);
  await shot('edited');
});

test('switching back to the first question shows its branch to its end', async () => {
  await page.click('.message.user .branch-prev');
  await waitForText('.message.user .branch-position', '1/2');
  assert.deepEqual(await texts('.message.user .message-body'), ['First question']);
  await waitForText('.message.assistant .branch-position', '2/2');
  // A reload shows the same branch: the service keeps the active leaf.
  await page.reload();
  await waitForText('.message.user .message-body', 'First question');
  await waitForText('.message.assistant .branch-position', '2/2');
  await shot('switched-back');
});

test('no page errors', () => {
  assert.deepEqual(consoleErrors, []);
  consoleErrors = [];
});
