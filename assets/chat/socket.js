// The WebSocket side of the page: one connection that comes back after a drop, with
// exponential backoff, and the routing of server frames to handlers by type.

/** First wait before reconnecting, in milliseconds. */
export const FIRST_RETRY_MS = 1000;
/** Longest wait between two attempts, in milliseconds. */
export const MAX_RETRY_MS = 30000;

/** The wait before attempt `n` (0-based) after a drop: 1 s, 2 s, 4 s … capped. */
export function retryDelay(attempt) {
  return Math.min(FIRST_RETRY_MS * 2 ** Math.min(attempt, 30), MAX_RETRY_MS);
}

/**
 * Routes a server frame. Frames are `{type, data}` events, `{type, success: true, data}`
 * answers, or `{type, success: false, error}` failures. A failure goes to
 * `failures[type]` (else `failures.default`); anything else to `frames[type]`. Frames of a
 * type the page does not know are ignored, so the service can add new ones.
 */
export function dispatch(frame, { frames, failures }) {
  if (typeof frame !== 'object' || frame === null || typeof frame.type !== 'string') {
    return;
  }
  if (frame.success === false) {
    const handler = Object.hasOwn(failures, frame.type) ? failures[frame.type] : failures.default;
    handler?.(frame);
    return;
  }
  if (Object.hasOwn(frames, frame.type)) {
    frames[frame.type](frame.data ?? {}, frame);
  }
}

/**
 * A WebSocket that reconnects. `onStatus` hears `{state: 'connecting' | 'open' | 'waiting' |
 * 'closed', retryInMs?, attempt?}`; `onOpen({reconnected})` runs on every open;
 * `onFrame(frame)` gets each parsed frame; `onFailedOpen()` runs when an attempt closes
 * before it opened (a refused upgrade looks like this: the page then checks its token).
 */
export class ChatSocket {
  constructor(url, { onFrame, onStatus, onOpen, onFailedOpen }) {
    this.url = url;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.onOpen = onOpen;
    this.onFailedOpen = onFailedOpen;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.everOpened = false;
    this.reconnectNow = () => {
      if (!this.stopped && this.timer !== null) {
        clearTimeout(this.timer);
        this.timer = null;
        this.connect();
      }
    };
    window.addEventListener('online', this.reconnectNow);
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    if (this.stopped) {
      return;
    }
    this.onStatus({ state: 'connecting', attempt: this.attempt });
    let opened = false;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener('open', () => {
      opened = true;
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      this.onStatus({ state: 'open' });
      this.onOpen({ reconnected });
    });
    socket.addEventListener('message', (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    });
    socket.addEventListener('close', () => {
      if (this.socket !== socket) {
        return;
      }
      this.socket = null;
      if (this.stopped) {
        return;
      }
      if (!opened) {
        this.onFailedOpen();
      }
      this.scheduleReconnect();
    });
  }

  scheduleReconnect() {
    if (this.stopped) {
      return;
    }
    const delay = retryDelay(this.attempt);
    this.attempt += 1;
    this.onStatus({ state: 'waiting', retryInMs: delay, attempt: this.attempt });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  /** Sends a client frame; false when the connection is not open. */
  send(type, data) {
    if (!this.isOpen) {
      return false;
    }
    this.socket.send(JSON.stringify({ type, data }));
    return true;
  }

  /** Closes for good: no reconnect. */
  close() {
    this.stopped = true;
    window.removeEventListener('online', this.reconnectNow);
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.socket !== null) {
      this.socket.close(1000, 'signed out');
      this.socket = null;
    }
    this.onStatus({ state: 'closed' });
  }
}
