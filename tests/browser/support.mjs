// What the browser tests run against: a fake OpenAI-compatible server, the release binary
// of the service on a free port with a fresh SQLite file, tokens, and Chromium.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root. */
export const ROOT = resolve(here, '..', '..');

/** Longest wait for anything a test waits on; only a hang reaches it. */
export const PATIENCE_MS = 20000;

/** The binary under test: `CHAT_SERVICE_BIN`, else the release build of the target dir. */
export function binaryPath() {
  if (process.env.CHAT_SERVICE_BIN) {
    return resolve(process.env.CHAT_SERVICE_BIN);
  }
  const target = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
  return join(target, 'release', 'chat-service');
}

/** Where screenshots go (ignored by git). */
export function artifactsDir() {
  const dir = process.env.BROWSER_ARTIFACTS_DIR || join(ROOT, 'target', 'browser-artifacts');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Polls `check` until it returns a truthy value, or fails after the deadline. */
export async function until(check, what, timeoutMs = PATIENCE_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

// ---------------------------------------------------------------------------------------
// Tokens

function base64Url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** An HS256 JWT, as the platform's auth server issues them. */
export function mintToken(secret, { sub, roles = ['user'], expiresIn = 3600, exp } = {}) {
  const header = base64Url({ alg: 'HS256', typ: 'JWT' });
  const claims = base64Url({
    sub,
    roles,
    exp: exp ?? Math.floor(Date.now() / 1000) + expiresIn,
  });
  const signature = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

// ---------------------------------------------------------------------------------------
// A fake OpenAI-compatible LLM

/** Words of the fake's reply to `text`: longer for a message that says LONG. */
export function replyWords(text) {
  const count = text.includes('LONG') ? 40 : 10;
  const words = [`Reply to “${text.slice(0, 40)}”:`];
  for (let i = 1; i <= count; i += 1) {
    words.push(`word${i}`);
  }
  return words;
}

/** The whole reply the fake streams for `text`. */
export function replyText(text) {
  return replyWords(text).join(' ');
}

/** The pieces of the default reply to `text`: its words, each after a space but the first. */
function replyPieces(text) {
  return replyWords(text).map((word, i) => (i === 0 ? word : ` ${word}`));
}

/**
 * Answers `POST /v1/chat/completions` with `stream: true` as server-sent chunks, one piece
 * every `delayMs` (the words of `replyText`, or what `answer(body)` gives for the request),
 * then a finish chunk, a usage chunk and `[DONE]`; a 500 with an OpenAI-style error for a
 * message containing FAIL. Records the requests.
 */
export async function startFakeLlm({ delayMs = 100, answer = (body, text) => replyPieces(text) } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (chunk) => {
      raw += chunk;
    });
    req.on('end', async () => {
      if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(raw);
      requests.push(body);
      const user = [...body.messages].reverse().find((m) => m.role === 'user');
      const text = typeof user?.content === 'string' ? user.content : '';
      if (text.includes('FAIL')) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'fake failure', type: 'server_error', code: null } }));
        return;
      }
      let closed = false;
      res.on('close', () => {
        closed = true;
      });
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      const chunk = (delta, finish = null) => ({
        id: 'chatcmpl-fake',
        object: 'chat.completion.chunk',
        created: Math.floor(Date.now() / 1000),
        model: body.model,
        choices: [{ index: 0, delta, finish_reason: finish }],
      });
      const send = (data) => res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
      send(chunk({ role: 'assistant', content: '' }));
      const pieces = answer(body, text);
      for (const piece of pieces) {
        await new Promise((r) => setTimeout(r, delayMs));
        if (closed) {
          return; // Stopped: the service closed the request.
        }
        send(chunk({ content: piece }));
      }
      send(chunk({}, 'stop'));
      send({
        ...chunk({}),
        choices: [],
        usage: { prompt_tokens: 12, completion_tokens: pieces.length, total_tokens: 12 + pieces.length },
      });
      send('[DONE]');
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    close: () => new Promise((r) => {
      server.closeAllConnections();
      server.close(r);
    }),
  };
}

// ---------------------------------------------------------------------------------------
// The service

/**
 * Starts the binary on `port` (0: a free one) with a database in `dir` and only the given
 * settings (no inherited OPENAI_* or the like; a working folder of its own, so no `.env` is
 * read). Resolves once it listens; `output` collects what it prints.
 */
export async function startService({ dir, port = 0, settings = {} }) {
  mkdirSync(join(dir, 'run'), { recursive: true });
  const env = {
    PATH: process.env.PATH,
    HOST: '127.0.0.1',
    PORT: String(port),
    DATABASE_URL: `sqlite://${join(dir, 'chat.db')}`,
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
    SHUTDOWN_TIMEOUT_SECONDS: '5',
    ...settings,
  };
  const child = spawn(binaryPath(), [], {
    cwd: join(dir, 'run'),
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const service = { child, output: '', address: null, exited: false };
  const exited = new Promise((r) => child.on('exit', (code, signal) => {
    service.exited = true;
    r({ code, signal });
  }));
  service.exitedPromise = exited;
  const collect = (data) => {
    service.output += data.toString();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  await until(() => {
    if (service.exited) {
      throw new Error(`the service exited at start:\n${service.output}`);
    }
    for (const line of service.output.split('\n')) {
      if (line.startsWith('{') && line.includes('"listening"')) {
        service.address = JSON.parse(line).address;
        return true;
      }
    }
    return false;
  }, 'the service to listen');
  service.port = Number(service.address.split(':').pop());
  service.baseUrl = `http://127.0.0.1:${service.port}`;
  /** Stops the service: SIGTERM lets it finish replies and close sockets with 1001. */
  service.stop = async (signal = 'SIGTERM') => {
    if (!service.exited) {
      child.kill(signal);
    }
    return exited;
  };
  /** The JSON log lines it wrote. */
  service.logLines = () => service.output.split('\n').filter((l) => l.startsWith('{'));
  return service;
}

/** A fresh temporary folder. */
export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

// ---------------------------------------------------------------------------------------
// Chromium

/** Debian's Chromium, headless, in a profile of its own. */
export async function launchBrowser(profileDir, options = {}) {
  return chromium.launchPersistentContext(profileDir, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    colorScheme: 'light',
    acceptDownloads: true,
    ...options,
  });
}
