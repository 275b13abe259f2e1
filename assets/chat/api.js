// The REST side of the page: the token, its claims, and calls to /api/v1 with the bearer
// token. Nothing here touches the DOM.

const TOKEN_KEY = 'chat-service.token';

/** An answer other than 2xx, with the service's `detail` message. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** The token kept for this tab, if any. */
export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps the token for this tab (session storage: gone when the tab closes). */
export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Forgets the token. */
export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * Reads `#token=...` from the address once and removes the fragment from the address bar
 * (and from history), so the token is not left in a bookmark or a shared link.
 */
export function takeTokenFromFragment() {
  const hash = window.location.hash;
  if (!hash.startsWith('#')) {
    return null;
  }
  const params = new URLSearchParams(hash.slice(1));
  const token = params.get('token');
  if (token === null) {
    return null;
  }
  const { pathname, search } = window.location;
  window.history.replaceState(window.history.state, '', pathname + search);
  return token.trim() || null;
}

function base64UrlDecode(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * The claims of a JWT, decoded without verifying it (the service verifies); null when the
 * text is not a JWT with a `sub`.
 */
export function decodeClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) {
    return null;
  }
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    if (typeof claims !== 'object' || claims === null || typeof claims.sub !== 'string') {
      return null;
    }
    return claims;
  } catch {
    return null;
  }
}

/** The `exp` claim as a Date, or null when absent. */
export function expiryOf(claims) {
  return typeof claims.exp === 'number' ? new Date(claims.exp * 1000) : null;
}

/** The file name of a `Content-Disposition: attachment; filename="..."` header. */
export function fileNameOf(disposition, fallback) {
  const match = /filename="?([^";]+)"?/i.exec(disposition || '');
  return match ? match[1] : fallback;
}

/**
 * Calls the REST API with a bearer token. A 401 calls `onUnauthorized(detail)` (the page
 * then asks for a new token) before the error is thrown.
 */
export class Api {
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async fetch(method, path, { body, query } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== '') {
        url.searchParams.set(name, String(value));
      }
    }
    const headers = { Authorization: `Bearer ${this.token}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch {
      throw new ApiError(0, 'The service cannot be reached. Check your connection.');
    }
    if (response.ok) {
      return response;
    }
    let detail = `The service answered ${response.status}.`;
    try {
      const parsed = await response.json();
      if (typeof parsed.detail === 'string') {
        detail = parsed.detail;
      }
    } catch {
      // A body that is not JSON keeps the generic message.
    }
    if (response.status === 401) {
      this.onUnauthorized(detail);
    }
    throw new ApiError(response.status, detail);
  }

  async json(method, path, options) {
    const response = await this.fetch(method, path, options);
    return response.json();
  }

  /** The signed-in user's profile. */
  me() {
    return this.json('GET', '/api/v1/users/me');
  }

  /** The user's limits and what is used of them (`GET /users/me/limits`). */
  limits() {
    return this.json('GET', '/api/v1/users/me/limits');
  }

  /** Models and provider, public. */
  async chatHealth() {
    const response = await fetch('/api/v1/chat/health', { cache: 'no-store' });
    return response.ok ? response.json() : null;
  }

  /** The user's conversations, most recently active first, with the total. */
  async conversations(search) {
    const response = await this.fetch('GET', '/api/v1/users/me/conversations', {
      query: { search, limit: 100 },
    });
    const items = await response.json();
    const total = Number(response.headers.get('X-Total-Count') ?? items.length);
    return { items, total };
  }

  /** Messages that match `q` (the search language of `GET /api/v1/search`), best first. */
  async search(q) {
    const response = await this.fetch('GET', '/api/v1/search', { query: { q, limit: 20 } });
    const items = await response.json();
    const total = Number(response.headers.get('X-Total-Count') ?? items.length);
    return { items, total };
  }

  createConversation(body) {
    return this.json('POST', '/api/v1/users/me/conversations', { body });
  }

  updateConversation(id, body) {
    return this.json('PATCH', `/api/v1/users/me/conversations/${encodeURIComponent(id)}`, {
      body,
    });
  }

  endConversation(id) {
    return this.json('POST', `/api/v1/users/me/conversations/${encodeURIComponent(id)}/end`);
  }

  /** Reopens a conversation; answers it with its messages. */
  reopenConversation(id) {
    return this.json(
      'POST',
      `/api/v1/users/me/conversations/${encodeURIComponent(id)}/reconnect`,
    );
  }

  deleteConversation(id) {
    return this.json('DELETE', `/api/v1/users/me/conversations/${encodeURIComponent(id)}`);
  }

  conversation(id) {
    return this.json('GET', `/api/v1/users/me/conversations/${encodeURIComponent(id)}`);
  }

  /** The newest messages of a conversation (up to 1000), oldest first, and the total. */
  async messages(id) {
    const path = `/api/v1/conversations/${encodeURIComponent(id)}/messages`;
    const limit = 1000;
    let response = await this.fetch('GET', path, { query: { limit } });
    let items = await response.json();
    const total = Number(response.headers.get('X-Total-Count') ?? items.length);
    if (total > items.length) {
      response = await this.fetch('GET', path, { query: { limit, skip: total - limit } });
      items = await response.json();
    }
    return { items, total };
  }

  /**
   * Shows another branch: the newest message below `messageId` becomes the conversation's
   * active leaf. Answers the conversation.
   */
  switchBranch(id, messageId) {
    return this.json('PUT', `/api/v1/conversations/${encodeURIComponent(id)}/branch`, {
      body: { message_id: messageId },
    });
  }

  /** The export of a conversation as a Blob with its file name. */
  async exportConversation(id, format) {
    const response = await this.fetch(
      'GET',
      `/api/v1/users/me/conversations/${encodeURIComponent(id)}/export`,
      { query: { format } },
    );
    const extension = format === 'markdown' ? 'md' : 'json';
    const name = fileNameOf(
      response.headers.get('Content-Disposition'),
      `conversation-${id}.${extension}`,
    );
    return { blob: await response.blob(), name };
  }
}
