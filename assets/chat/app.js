// The chat page: sign-in, the conversation list and one open conversation, chatting over
// the service's WebSocket. Text from the service is set as text, never as HTML; replies are
// rendered as Markdown by markdown.js, which lets nothing they hold run.

import {
  Api,
  decodeClaims,
  expiryOf,
  forgetToken,
  storeToken,
  storedToken,
  takeTokenFromFragment,
} from './api.js';
import { renderMarkdown } from './markdown.js';
import { hitElement } from './search.js';
import { ChatSocket, dispatch } from './socket.js';

const OPEN_CONVERSATION_KEY = 'chat-service.conversation';
const SEARCH_DELAY_MS = 250;
/** setTimeout's longest delay; a later expiry is caught by the clock tick. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const CLOCK_TICK_MS = 30000;
/** Waits between checks for a reply whose live stream was lost. */
const REPLY_POLL_MS = [2000, 4000, 8000, 16000];
/** Shortest time between two renders of a reply being written (chunks come far faster). */
const REPLY_RENDER_MS = 200;

const $ = (id) => document.getElementById(id);

/** Creates an element with a class and text. */
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

// ---------------------------------------------------------------------------------------
// Time

const timeOnly = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateAndTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });

function sameDay(a, b) {
  return a.toDateString() === b.toDateString();
}

/** A short time for today, a date and time otherwise. */
function formatWhen(date) {
  return sameDay(date, new Date()) ? timeOnly.format(date) : dateAndTime.format(date);
}

function timeElement(iso) {
  const date = new Date(iso);
  const node = element('time', 'time', Number.isNaN(date.getTime()) ? '' : formatWhen(date));
  if (!Number.isNaN(date.getTime())) {
    node.dateTime = date.toISOString();
    node.title = fullTime.format(date);
  }
  return node;
}

/** "3 h 12 min", "45 s". */
function formatDuration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    return `${hours} h ${minutes % 60} min`;
  }
  return `${Math.floor(hours / 24)} days`;
}

// ---------------------------------------------------------------------------------------
// State

/** A reply being written for one conversation. */
class Reply {
  constructor(conversationId, content = null) {
    this.conversationId = conversationId;
    /** The user's message it answers, when sent from this page. */
    this.content = content;
    /** Set by `ai_response_start`; chunks of another generation start a new text. */
    this.generationId = null;
    /** Highest `seq` shown; replayed chunks at or below it are skipped. */
    this.lastSeq = 0;
    this.text = '';
    /** Tool calls: `{name, state: 'calling' | 'done' | 'failed'}`. */
    this.tools = [];
    /** Whether the service has acknowledged it (a start or a chunk arrived). */
    this.confirmed = false;
    this.stopRequested = false;
    /** A `resume` was sent after a reconnect and has had no answer yet. */
    this.resumeSent = false;
  }
}

const state = {
  token: null,
  claims: null,
  me: null,
  api: null,
  socket: null,
  models: null,
  conversations: [],
  /** How many conversations match the search (the list shows up to 100). */
  listTotal: 0,
  /** The conversation shown, as the API answers it. */
  current: null,
  /** Its messages, oldest first; a message not yet stored has `local: true`. */
  messages: [],
  /** Earlier messages not loaded (over the page size). */
  hiddenCount: 0,
  /** Replies in progress, by conversation ID, in the order they were asked for. */
  replies: new Map(),
  /** Notices shown in a conversation, by conversation ID: `{text, kind, at, afterId}`. */
  notices: new Map(),
  /** The ID of the user message being edited in place, if any. */
  editing: null,
  listRequest: 0,
  messagesRequest: 0,
  expiryTimer: null,
  clockTimer: null,
  searchTimer: null,
  /** The message a search hit opened, to scroll to and mark once its conversation loads. */
  reveal: null,
};

// ---------------------------------------------------------------------------------------
// Sign-in

/** Shows the sign-in form; `reason` says why (an error unless `kind` is 'info'). */
function showSignIn(reason, kind = 'error') {
  $('app-view').hidden = true;
  $('session').hidden = true;
  document.body.classList.remove('signed-in');
  $('signin-view').hidden = false;
  const reasonNode = $('signin-reason');
  reasonNode.textContent = reason || '';
  reasonNode.hidden = !reason;
  reasonNode.classList.toggle('info', kind === 'info');
  $('token-input').value = '';
  $('token-input').focus();
}

/** Leaves the session; `reason` is shown above the sign-in form. */
function signOut(reason, kind) {
  if (state.socket) {
    state.socket.close();
  }
  clearTimeout(state.expiryTimer);
  clearInterval(state.clockTimer);
  clearTimeout(state.searchTimer);
  for (const dialog of document.querySelectorAll('dialog[open]')) {
    dialog.close();
  }
  forgetToken();
  sessionStorage.removeItem(OPEN_CONVERSATION_KEY);
  Object.assign(state, {
    token: null,
    claims: null,
    me: null,
    api: null,
    socket: null,
    conversations: [],
    current: null,
    messages: [],
    hiddenCount: 0,
    replies: new Map(),
    notices: new Map(),
    editing: null,
    expiryTimer: null,
    clockTimer: null,
  });
  showSignIn(reason, kind);
}

function refusedReason(detail) {
  return `The service refused the token: ${detail.replace(/\.$/, '')}.`;
}

function expiredReason(expiry) {
  return `Your token expired on ${dateAndTime.format(expiry)}. Paste a new one to go on.`;
}

async function signIn(token) {
  const claims = decodeClaims(token);
  if (claims === null) {
    forgetToken();
    showSignIn('That is not an access token: expected a JWT with a "sub" claim.');
    return;
  }
  const expiry = expiryOf(claims);
  if (expiry !== null && expiry.getTime() <= Date.now()) {
    forgetToken();
    showSignIn(expiredReason(expiry));
    return;
  }
  const api = new Api(token, (detail) => {
    // Later calls of this session; the first one is answered below.
    if (state.api === api) {
      signOut(refusedReason(detail));
    }
  });
  let me;
  try {
    me = await api.me();
  } catch (error) {
    if (error.status === 401) {
      forgetToken();
      showSignIn(refusedReason(error.message));
    } else {
      showSignIn(error.message);
    }
    return;
  }
  storeToken(token);
  Object.assign(state, { token, claims, api, me });
  showApp();
}

function showApp() {
  $('signin-view').hidden = true;
  $('session').hidden = false;
  document.body.classList.add('signed-in');
  $('app-view').hidden = false;
  const roles = Array.isArray(state.claims.roles) ? state.claims.roles : [];
  const name = element('strong', '', state.me.username);
  $('who').replaceChildren(element('span', 'who-label', 'Signed in as '), name);
  $('who').title = [state.me.full_name, state.me.email].filter(Boolean).join(' · ');
  $('roles').textContent = roles.length ? roles.join(', ') : 'no roles';
  startClock();
  connectSocket();
  loadModels();
  refreshStanding();
  refreshList().then(() => {
    const remembered = rememberedConversation();
    if (remembered && state.current === null) {
      openConversation(remembered, { quiet: true });
    }
  });
  renderConversation();
}

/** Shows when the token expires, and signs out when it has. */
function startClock() {
  const expiry = expiryOf(state.claims);
  const tick = () => {
    if (expiry === null) {
      $('expiry').textContent = 'Token without expiry';
      return;
    }
    const left = expiry.getTime() - Date.now();
    if (left <= 0) {
      signOut(expiredReason(expiry));
      return;
    }
    $('expiry').textContent = `Token expires in ${formatDuration(left)}`;
    $('expiry').title = `At ${fullTime.format(expiry)}`;
  };
  tick();
  state.clockTimer = setInterval(tick, CLOCK_TICK_MS);
  if (expiry !== null) {
    const left = expiry.getTime() - Date.now();
    if (left < MAX_TIMER_MS) {
      state.expiryTimer = setTimeout(tick, left + 50);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Errors and notices

/** Adds a notice to a conversation; `kind` is 'error' or 'info'. */
function addNotice(conversationId, text, kind = 'error') {
  const list = state.notices.get(conversationId) || [];
  const stored = state.current?.id === conversationId
    ? state.messages.filter((m) => !m.local)
    : [];
  const afterId = stored.length ? stored[stored.length - 1].id : null;
  list.push({ text, kind, at: new Date().toISOString(), afterId });
  state.notices.set(conversationId, list);
  if (state.current?.id === conversationId) {
    renderMessages();
  }
}

/** Shows a failed action where the user is looking. */
function report(error) {
  if (error?.status === 401) {
    return; // The sign-in form is already back, with the reason.
  }
  const text = error?.message || String(error);
  if (state.current) {
    addNotice(state.current.id, text);
  } else {
    $('list-status').textContent = text;
  }
}

// ---------------------------------------------------------------------------------------
// WebSocket

function socketUrl() {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  const user = encodeURIComponent(state.me.username);
  return `${scheme}//${window.location.host}/ws/chat/${user}?token=${encodeURIComponent(state.token)}`;
}

function connectSocket() {
  const socket = new ChatSocket(socketUrl(), {
    onFrame: (frame) => dispatch(frame, { frames: frameHandlers, failures: failureHandlers }),
    onStatus: showConnection,
    onOpen: ({ reconnected }) => {
      if (reconnected) {
        resumeReplies();
      }
      updateComposer();
    },
    onFailedOpen: () => {
      // A refused upgrade cannot be told from a network error in a browser: ask the REST
      // API, whose 401 brings the sign-in form back.
      state.api?.me().catch(() => {});
    },
  });
  state.socket = socket;
  socket.connect();
}

function showConnection(status) {
  const node = $('connection');
  node.dataset.state = status.state;
  switch (status.state) {
    case 'open':
      node.textContent = 'Connected';
      break;
    case 'connecting':
      node.textContent = status.attempt ? 'Reconnecting…' : 'Connecting…';
      break;
    case 'waiting':
      node.textContent = `Disconnected, retrying in ${Math.round(status.retryInMs / 1000)} s`;
      break;
    default:
      node.textContent = '';
  }
  updateComposer();
}

/**
 * After a reconnect, asks the service to replay the replies that were being shown. A reply
 * never acknowledged before the drop cannot be named by a generation: it is read back from
 * the REST API once stored.
 */
function resumeReplies() {
  for (const [id, reply] of [...state.replies]) {
    if (reply.confirmed) {
      reply.resumeSent = true;
      state.socket.send('resume', { conversation_id: id, after_seq: reply.lastSeq });
    } else {
      lostReply(id);
    }
  }
}

/**
 * A reply whose live stream is gone (the connection dropped and the service cannot replay
 * it): the page reloads the conversation until the stored reply appears.
 */
function lostReply(conversationId) {
  state.replies.delete(conversationId);
  if (state.current?.id !== conversationId) {
    return;
  }
  addNotice(
    conversationId,
    'The connection dropped while the reply was being written. It is stored when complete and shows here.',
    'info',
  );
  let attempt = 0;
  const check = async () => {
    if (state.current?.id !== conversationId || state.replies.has(conversationId)) {
      return;
    }
    await loadMessages(conversationId);
    const last = state.messages[state.messages.length - 1];
    if (last && last.role === 'user' && attempt < REPLY_POLL_MS.length) {
      setTimeout(check, REPLY_POLL_MS[attempt]);
      attempt += 1;
    }
  };
  check();
}

/** The service has taken the message: the reply has started. */
function acknowledge(reply) {
  reply.resumeSent = false;
  if (reply.confirmed) {
    return;
  }
  reply.confirmed = true;
  if (state.current?.id === reply.conversationId) {
    for (const message of state.messages) {
      message.acknowledged = true;
    }
    renderMessages();
  }
}

function replyFor(conversationId) {
  let reply = state.replies.get(conversationId);
  if (!reply) {
    reply = new Reply(conversationId);
    state.replies.set(conversationId, reply);
  }
  return reply;
}

/**
 * The reply a failure frame is about. Failures carry no conversation ID today: it is the
 * oldest reply the service has not acknowledged yet (refusals come at once), else the
 * oldest in progress (a failed generation).
 */
function replyForFailure(frame) {
  const named = frame.data?.conversation_id ?? frame.conversation_id;
  if (named && state.replies.has(named)) {
    return state.replies.get(named);
  }
  const replies = [...state.replies.values()];
  return replies.find((r) => !r.confirmed) ?? replies[0] ?? null;
}

/** Server frames by type. Unknown types are ignored. */
const frameHandlers = {
  ai_response_start(data) {
    const reply = replyFor(data.conversation_id);
    if (reply.generationId !== data.generation_id) {
      reply.generationId = data.generation_id ?? null;
      reply.lastSeq = 0;
      reply.text = '';
      reply.tools = [];
    }
    acknowledge(reply);
    showReply(reply);
  },
  ai_response_chunk(data) {
    const reply = replyFor(data.conversation_id);
    if (data.generation_id && reply.generationId && data.generation_id !== reply.generationId) {
      return; // A chunk of another generation than the one shown.
    }
    if (typeof data.seq === 'number') {
      if (data.seq <= reply.lastSeq) {
        return; // Already shown (a replay after a resume).
      }
      reply.lastSeq = data.seq;
    }
    reply.generationId ??= data.generation_id ?? null;
    acknowledge(reply);
    reply.text += typeof data.delta === 'string' ? data.delta : '';
    showReply(reply);
  },
  tool_call(data) {
    const reply = replyFor(data.conversation_id);
    acknowledge(reply);
    reply.tools.push({ name: String(data.name ?? 'a tool'), state: 'calling' });
    showReply(reply);
  },
  tool_result(data) {
    const reply = replyFor(data.conversation_id);
    const call = [...reply.tools].reverse()
      .find((t) => t.state === 'calling' && (data.name === undefined || t.name === data.name));
    if (call) {
      call.state = data.ok === false ? 'failed' : 'done';
    }
    showReply(reply);
  },
  send_message(data) {
    finishReply(data);
    refreshStanding();
  },
  regenerate(data) {
    finishBranchingReply(data);
  },
  edit_message(data) {
    finishBranchingReply(data);
  },
  message_broadcast(data) {
    // Another tab or device of this user chatted in a conversation.
    if (state.current?.id === data.conversation_id) {
      if (continuesShownPath(data)) {
        addExchange(data);
        renderMessages();
      } else {
        // A regenerated or edited message: it goes beside one shown, not after them.
        loadMessages(data.conversation_id);
      }
    }
    scheduleListRefresh();
  },
  branch_changed(data) {
    // Another tab or device showed another branch, or deleted one.
    if (state.current?.id === data.conversation_id && !state.replies.has(data.conversation_id)) {
      loadMessages(data.conversation_id);
    }
  },
  resume(data) {
    // The service's answer to a resume: nothing left to replay when it is not generating.
    if (data.generating === false && data.conversation_id) {
      lostReply(data.conversation_id);
    }
  },
  end_conversation(data) {
    conversationEnded(data);
  },
  conversation_ended(data) {
    conversationEnded(data);
  },
  conversation_updated(data) {
    retitle(data);
  },
  stop_generation() {},
  pong() {},
};

/** Failure frames by request type. */
const failureHandlers = {
  // A service that cannot resume answers with a failure: the reply goes on on the service
  // and is stored; the page picks it up from the REST API instead.
  resume() {
    for (const reply of [...state.replies.values()]) {
      if (reply.resumeSent) {
        lostReply(reply.conversationId);
      }
    }
  },
  send_message(frame) {
    const { reply, conversationId } = dropFailedReply(frame);
    if (!conversationId) {
      return;
    }
    if (state.current?.id === conversationId) {
      // The user's message is stored unless the service refused it at once: show what is,
      // and give a refused message back to the composer so it is not lost.
      loadMessages(conversationId).then(() => {
        const last = state.messages[state.messages.length - 1];
        const stored = last?.role === 'user' && last.content === reply?.content;
        const input = $('message-input');
        if (reply?.content && !stored && !input.value) {
          input.value = reply.content;
        }
        addNotice(conversationId, failureText(frame, true));
        updateComposer();
      });
    } else {
      addNotice(conversationId, failureText(frame, true));
    }
    if (frame.limit) {
      refreshStanding();
    }
  },
  regenerate(frame) {
    branchingFailed(frame);
  },
  edit_message(frame) {
    branchingFailed(frame);
  },
  default(frame) {
    report(new Error(frame.error || 'The service could not do that.'));
  },
};

/** Forgets the reply a failure ended; answers it and its conversation (else the open one). */
function dropFailedReply(frame) {
  const reply = replyForFailure(frame);
  if (reply) {
    state.replies.delete(reply.conversationId);
  }
  return { reply, conversationId: reply?.conversationId ?? state.current?.id };
}

/** A regenerate or edit that failed: the stored path shows again, with why. */
function branchingFailed(frame) {
  const { conversationId } = dropFailedReply(frame);
  if (!conversationId) {
    return;
  }
  addNotice(conversationId, failureText(frame));
  if (frame.limit) {
    refreshStanding();
  }
  if (state.current?.id === conversationId) {
    loadMessages(conversationId);
  }
}

/** A failed turn's notice; a usage limit's says when to try again (and, with `kept`, that
 * the message is back in the composer). */
function failureText(frame, kept = false) {
  if (frame.limit && Number.isFinite(frame.retry_after)) {
    const at = new Date(Date.now() + frame.retry_after * 1000);
    const when = frame.retry_after < 86400 ? timeOnly.format(at) : dateAndTime.format(at);
    const note = kept ? '; your message is kept below' : '';
    return `Not sent: ${frame.error} (you can send again at ${when}${note})`;
  }
  return `No reply: ${frame.error}`;
}

/** Shows the tokens left today and this month, when the user has budgets. */
async function refreshStanding() {
  const standing = await state.api?.limits().catch(() => null);
  const node = $('standing');
  const parts = [];
  for (const [budget, period] of [[standing?.tokens_per_day, 'today'], [standing?.tokens_per_month, 'this month']]) {
    if (budget && budget.limit !== null) {
      parts.push(`${budget.remaining.toLocaleString()} of ${budget.limit.toLocaleString()} tokens left ${period}`);
    }
  }
  node.textContent = parts.join(' · ');
  node.hidden = parts.length === 0;
}

function toMessage(part, role, conversationId) {
  const metadata = role === 'assistant' ? { stopped: Boolean(part.stopped) } : null;
  return {
    id: part.id,
    conversation_id: conversationId,
    role,
    content: part.content,
    timestamp: part.timestamp,
    model: part.model ?? null,
    message_metadata: metadata,
  };
}

/** Adds both messages of an exchange to the open conversation, once. */
function addExchange(data) {
  const known = new Set(state.messages.map((m) => m.id));
  const localIndex = state.messages.findIndex((m) => m.local);
  if (data.user_message && !known.has(data.user_message.id)) {
    const user = toMessage(data.user_message, 'user', data.conversation_id);
    if (localIndex >= 0) {
      state.messages.splice(localIndex, 1, user);
    } else {
      state.messages.push(user);
    }
  } else if (localIndex >= 0) {
    state.messages.splice(localIndex, 1);
  }
  if (data.ai_response && !known.has(data.ai_response.id)) {
    state.messages.push(toMessage(data.ai_response, 'assistant', data.conversation_id));
  }
}

/** Whether an exchange follows the last message shown (a new message), rather than going
 * beside one (a regenerated reply, an edited message). */
function continuesShownPath(data) {
  const shown = state.messages.filter((m) => !m.local);
  const last = shown[shown.length - 1];
  const parent = data.user_message?.parent_id;
  if (parent === undefined || shown.some((m) => m.id === data.user_message?.id)) {
    return parent === undefined;
  }
  return (last?.id ?? null) === parent;
}

/** A regenerated reply or an edited message is stored: the active path is reloaded, with
 * the new branch and its siblings. */
function finishBranchingReply(data) {
  state.replies.delete(data.conversation_id);
  if (state.current?.id === data.conversation_id) {
    loadMessages(data.conversation_id);
  }
  scheduleListRefresh();
}

function finishReply(data) {
  state.replies.delete(data.conversation_id);
  if (state.current?.id === data.conversation_id) {
    addExchange(data);
    renderMessages();
  }
  scheduleListRefresh();
}

function conversationEnded(data) {
  if (state.current?.id === data.conversation_id) {
    state.current = { ...state.current, status: data.status ?? 'ended', ended_at: data.ended_at };
    renderConversation();
  }
  scheduleListRefresh();
}

/** A conversation was given a title (written by the service after its first reply). */
function retitle(data) {
  if (typeof data.title !== 'string' || !data.conversation_id) {
    return;
  }
  const listed = state.conversations.find((c) => c.id === data.conversation_id);
  if (listed) {
    listed.title = data.title;
    renderList();
  }
  if (state.current?.id === data.conversation_id) {
    state.current = { ...state.current, title: data.title };
    $('conversation-title').textContent = data.title;
  }
}

// ---------------------------------------------------------------------------------------
// Conversation list

let listRefreshTimer = null;
function scheduleListRefresh() {
  clearTimeout(listRefreshTimer);
  listRefreshTimer = setTimeout(() => refreshList(), 200);
}

async function refreshList() {
  if (!state.api) {
    return;
  }
  const request = ++state.listRequest;
  const search = $('search').value.trim();
  // Messages are searched beside the titles; a query the service refuses shows its reason.
  const hits = search ? state.api.search(search).catch((error) => ({ error })) : null;
  let result;
  try {
    result = await state.api.conversations(search);
  } catch (error) {
    if (error.status !== 401) {
      $('list-status').textContent = `Could not load conversations: ${error.message}`;
    }
    return;
  }
  if (request !== state.listRequest || !state.api) {
    return;
  }
  state.conversations = result.items;
  state.listTotal = result.total;
  renderList();
  const found = hits ? await hits : null;
  if (request === state.listRequest && state.api) {
    renderHits(search, found);
  }
}

/** The message hits of the search box, under the conversations it found by title. */
function renderHits(search, found) {
  const section = $('message-hits');
  section.hidden = found === null;
  const list = $('search-hits');
  list.replaceChildren();
  if (found === null) {
    return;
  }
  const status = $('message-hits-status');
  if (found.error) {
    status.textContent = found.error.status === 401 ? '' : found.error.message;
    return;
  }
  const messages = found.items.filter((hit) => hit.message_id);
  for (const hit of messages) {
    list.append(hitElement(hit, (chosen) => {
      openConversation(chosen.conversation_id, { reveal: chosen.message_id });
    }));
  }
  const titles = found.items.length - messages.length;
  const total = found.total - titles;
  if (messages.length === 0) {
    status.textContent = `No message matches “${search}”.`;
  } else if (total > messages.length) {
    status.textContent = `Messages: the best ${messages.length} of ${total}.`;
  } else {
    status.textContent = `${total} message${total === 1 ? '' : 's'} matching “${search}”.`;
  }
}

/** Scrolls to the message a search hit named and marks it. */
function revealFound() {
  const id = state.reveal;
  if (!id) {
    return;
  }
  state.reveal = null;
  const item = [...$('messages').querySelectorAll('li[data-id]')].find((li) => li.dataset.id === id);
  if (!item) {
    addNotice(state.current.id, 'The message found is not among those shown.');
    return;
  }
  for (const old of $('messages').querySelectorAll('li.found')) {
    old.classList.remove('found');
  }
  item.classList.add('found');
  item.scrollIntoView({ block: 'center' });
}

function renderList() {
  const total = state.listTotal;
  const search = $('search').value.trim();
  const list = $('conversation-list');
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = element('li');
    const button = element('button', 'conversation-item');
    button.type = 'button';
    button.dataset.id = conversation.id;
    if (state.current?.id === conversation.id) {
      button.setAttribute('aria-current', 'true');
    }
    button.append(element('span', 'conversation-item-title', conversation.title));
    const meta = element('span', 'conversation-item-meta');
    if (conversation.status !== 'active') {
      meta.append(element('span', `badge ${conversation.status}`, conversation.status));
    }
    meta.append(timeElement(conversation.updated_at));
    button.append(meta);
    button.addEventListener('click', () => openConversation(conversation.id));
    item.append(button);
    list.append(item);
  }
  const shown = state.conversations.length;
  let status;
  if (shown === 0) {
    status = search ? `No conversation matches “${search}”.` : 'No conversations yet.';
  } else if (total > shown) {
    status = `Showing ${shown} of ${total} conversations.`;
  } else {
    status = `${total} conversation${total === 1 ? '' : 's'}${search ? ` matching “${search}”` : ''}.`;
  }
  $('list-status').textContent = status;
}

// ---------------------------------------------------------------------------------------
// One conversation

/** The conversation this user had open in this tab before a reload. */
function rememberedConversation() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(OPEN_CONVERSATION_KEY));
    return saved?.user === state.me.username ? saved.id : null;
  } catch {
    return null;
  }
}

function setView(view) {
  $('app-view').dataset.view = view;
}

async function openConversation(id, { quiet = false, reveal = null } = {}) {
  let conversation = state.conversations.find((c) => c.id === id);
  try {
    conversation ??= await state.api.conversation(id);
  } catch (error) {
    if (error.status === 404) {
      sessionStorage.removeItem(OPEN_CONVERSATION_KEY);
    }
    if (!quiet) {
      report(error);
    }
    return;
  }
  state.current = conversation;
  state.messages = [];
  state.hiddenCount = 0;
  state.editing = null;
  state.reveal = reveal;
  sessionStorage.setItem(
    OPEN_CONVERSATION_KEY,
    JSON.stringify({ user: state.me.username, id }),
  );
  setView('conversation');
  renderConversation();
  renderList();
  await loadMessages(id);
  $('message-input').focus();
}

function closeConversation() {
  state.current = null;
  state.messages = [];
  sessionStorage.removeItem(OPEN_CONVERSATION_KEY);
  setView('list');
  renderConversation();
}

async function loadMessages(id) {
  const request = ++state.messagesRequest;
  let result;
  try {
    result = await state.api.messages(id);
  } catch (error) {
    report(error);
    return;
  }
  if (request !== state.messagesRequest || state.current?.id !== id) {
    return;
  }
  // A message sent but not yet answered is kept until its answer arrives.
  const pending = state.replies.has(id) ? state.messages.filter((m) => m.local) : [];
  const stored = result.items;
  const last = stored[stored.length - 1];
  const keep = pending.filter((m) => !(last && last.role === 'user' && last.content === m.content));
  state.messages = [...stored, ...keep];
  state.hiddenCount = result.total - stored.length;
  renderMessages();
  revealFound();
}

function renderConversation() {
  const conversation = state.current;
  $('empty-state').hidden = conversation !== null;
  $('conversation-pane').hidden = conversation === null;
  if (conversation === null) {
    return;
  }
  $('conversation-title').textContent = conversation.title;
  const parts = [conversation.status === 'active' ? 'Active' : `${conversation.status[0].toUpperCase()}${conversation.status.slice(1)}`];
  parts.push(conversation.model ? `model ${conversation.model}` : 'default model');
  parts.push(`started ${formatWhen(new Date(conversation.created_at))}`);
  $('conversation-meta').textContent = parts.join(' · ');
  const ended = conversation.status === 'ended';
  $('end').hidden = ended;
  $('reopen').hidden = !ended;
  $('ended-note').hidden = !ended;
  renderMessages();
}

const ROLE_NAMES = { user: 'You', assistant: 'Assistant', system: 'System' };

function messageElement(message) {
  const item = element('li', `message ${message.role}`);
  if (message.id) {
    item.dataset.id = message.id;
  }
  const head = element('div', 'message-head');
  head.append(element('span', 'role', ROLE_NAMES[message.role] ?? message.role));
  if (message.local && !message.acknowledged) {
    head.append(element('span', 'muted', 'sending…'));
  } else {
    head.append(timeElement(message.timestamp));
  }
  const stopped = message.role === 'assistant' && message.message_metadata?.stopped === true;
  if (stopped) {
    head.append(element('span', 'badge stopped', 'stopped'));
  }
  const switcher = branchSwitcher(message);
  if (switcher) {
    head.append(switcher);
  }
  const actions = messageActions(message);
  if (actions) {
    head.append(actions);
  }
  item.append(head);
  if (state.editing === message.id && message.id) {
    item.append(editBox(message));
    return item;
  }
  const text = message.content || (stopped ? 'Stopped before any text.' : '');
  item.append(messageBody(message.role, text, !message.content));
  return item;
}

/**
 * The body of a message: a reply's text as Markdown, anything else as plain text; `muted`
 * for a placeholder in place of an empty text.
 */
function messageBody(role, text, muted = false) {
  if (role !== 'assistant' || muted) {
    return element('div', `message-body${muted ? ' muted' : ''}`, text);
  }
  const body = element('div', 'message-body markdown');
  body.append(renderMarkdown(text));
  return body;
}

/** "< 2/3 >" where a message has siblings: the other branches at this point. */
function branchSwitcher(message) {
  const siblings = Array.isArray(message.sibling_ids) ? message.sibling_ids : [];
  const index = message.sibling_index;
  if (siblings.length < 2 || typeof index !== 'number' || message.local) {
    return null;
  }
  const nav = element('span', 'branches');
  nav.setAttribute('role', 'group');
  nav.setAttribute('aria-label', 'Versions of this message');
  const step = (label, className, target) => {
    const button = element('button', `link-button ${className}`, label);
    button.type = 'button';
    button.disabled = target < 0 || target >= siblings.length || busy();
    button.setAttribute('aria-label', className === 'branch-prev' ? 'Previous version' : 'Next version');
    button.addEventListener('click', () => showBranch(siblings[target]));
    return button;
  };
  nav.append(step('<', 'branch-prev', index - 1));
  nav.append(element('span', 'branch-position', `${index + 1}/${siblings.length}`));
  nav.append(step('>', 'branch-next', index + 1));
  return nav;
}

/** Regenerate on a stored reply, edit on a stored user message. */
function messageActions(message) {
  if (!message.id || message.local || state.current?.status === 'ended') {
    return null;
  }
  let button;
  if (message.role === 'assistant') {
    button = element('button', 'link-button regenerate', 'Regenerate');
    button.title = 'Write another reply to the same message';
    button.addEventListener('click', () => regenerateReply(message));
  } else if (message.role === 'user') {
    button = element('button', 'link-button edit', 'Edit');
    button.title = 'Edit this message and get a new reply; the old one is kept';
    button.addEventListener('click', () => startEditing(message));
  } else {
    return null;
  }
  button.type = 'button';
  button.disabled = busy();
  const actions = element('span', 'message-actions');
  actions.append(button);
  return actions;
}

/** Whether the open conversation is writing a reply or cannot take one now. */
function busy() {
  const conversation = state.current;
  return !conversation || state.replies.has(conversation.id) || !(state.socket?.isOpen ?? false);
}

/** The edited text of a user message, in place: Enter sends, Escape cancels. */
function editBox(message) {
  const form = element('form', 'edit-form');
  const input = element('textarea', 'edit-input');
  input.value = message.content;
  input.rows = Math.min(8, Math.max(2, message.content.split('\n').length));
  input.setAttribute('aria-label', 'Edited message');
  const send = element('button', 'primary edit-send', 'Send');
  send.type = 'submit';
  const cancel = element('button', 'secondary edit-cancel', 'Cancel');
  cancel.type = 'button';
  cancel.addEventListener('click', () => stopEditing());
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === 'Escape') {
      event.preventDefault();
      stopEditing();
    }
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sendEdit(message, input.value);
  });
  const buttons = element('div', 'edit-buttons');
  buttons.append(cancel, send);
  form.append(input, buttons);
  return form;
}

function startEditing(message) {
  if (busy()) {
    return;
  }
  state.editing = message.id;
  renderMessages();
  const input = $('messages').querySelector(`li[data-id="${CSS.escape(message.id)}"] .edit-input`);
  input?.focus();
  input?.setSelectionRange(input.value.length, input.value.length);
}

function stopEditing() {
  state.editing = null;
  renderMessages();
}

/** Shows the path up to (not including) `message`, where a new branch is being written. */
function cutPathAt(message) {
  const index = state.messages.findIndex((m) => m.id === message.id);
  if (index >= 0) {
    state.messages = state.messages.slice(0, index);
  }
}

function sendEdit(message, content) {
  const conversation = state.current;
  if (!conversation || !content.trim() || busy()) {
    return;
  }
  const sent = state.socket.send('edit_message', {
    conversation_id: conversation.id,
    message_id: message.id,
    content,
  });
  if (!sent) {
    return;
  }
  state.editing = null;
  cutPathAt(message);
  showSent(conversation, content);
}

function regenerateReply(message) {
  const conversation = state.current;
  if (!conversation || busy()) {
    return;
  }
  const sent = state.socket.send('regenerate', {
    conversation_id: conversation.id,
    message_id: message.id,
  });
  if (!sent) {
    return;
  }
  cutPathAt(message);
  state.replies.set(conversation.id, new Reply(conversation.id));
  renderMessages();
}

/** Shows the branch of another version of a message, to its newest end. */
async function showBranch(messageId) {
  const conversation = state.current;
  if (!conversation || busy()) {
    return;
  }
  try {
    state.current = { ...conversation, ...(await state.api.switchBranch(conversation.id, messageId)) };
  } catch (error) {
    report(error);
    return;
  }
  await loadMessages(conversation.id);
}

function noticeElement(notice) {
  const item = element('li', `notice ${notice.kind}`);
  if (notice.kind === 'error') {
    item.setAttribute('role', 'alert');
  }
  item.append(element('span', 'notice-text', notice.text));
  item.append(timeElement(notice.at));
  return item;
}

function replyElement(reply) {
  const item = element('li', 'message assistant streaming');
  item.setAttribute('aria-busy', 'true');
  item.dataset.reply = reply.conversationId;
  const head = element('div', 'message-head');
  head.append(element('span', 'role', 'Assistant'));
  head.append(element('span', 'muted writing', reply.stopRequested ? 'stopping…' : 'writing…'));
  item.append(head);
  if (reply.tools.length) {
    const tools = element('ul', 'tools');
    for (const tool of reply.tools) {
      const label = {
        calling: `Calling ${tool.name}…`,
        done: `Called ${tool.name}`,
        failed: `${tool.name} failed`,
      }[tool.state];
      tools.append(element('li', `tool ${tool.state}`, label));
    }
    item.append(tools);
  }
  item.append(messageBody('assistant', reply.text));
  reply.renders = (reply.renders ?? 0) + 1;
  item.dataset.renders = String(reply.renders);
  return item;
}

function nearBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function renderMessages() {
  const list = $('messages');
  if (!state.current) {
    list.replaceChildren();
    return;
  }
  const follow = nearBottom(list) || list.childElementCount === 0;
  const notices = state.notices.get(state.current.id) || [];
  const nodes = [];
  if (state.hiddenCount > 0) {
    nodes.push(element('li', 'notice info', `${state.hiddenCount} earlier messages are not shown; export the conversation to see them all.`));
  }
  for (const notice of notices.filter((n) => n.afterId === null)) {
    nodes.push(noticeElement(notice));
  }
  const conversation = state.current;
  if (conversation.system_message && !state.messages.some((m) => m.role === 'system')) {
    nodes.push(messageElement({
      role: 'system',
      content: conversation.system_message,
      timestamp: conversation.created_at,
    }));
  }
  for (const message of state.messages) {
    nodes.push(messageElement(message));
    if (message.id) {
      for (const notice of notices.filter((n) => n.afterId === message.id)) {
        nodes.push(noticeElement(notice));
      }
    }
  }
  const reply = state.replies.get(state.current.id);
  if (reply) {
    nodes.push(replyElement(reply));
  }
  if (!nodes.some((n) => n.classList.contains('message') || n.classList.contains('notice'))) {
    const empty = conversation.status === 'ended' ? 'No messages.' : 'No messages yet. Say hello below.';
    nodes.push(element('li', 'placeholder muted', empty));
  }
  list.replaceChildren(...nodes);
  if (follow) {
    list.scrollTop = list.scrollHeight;
  }
  updateComposer();
}

/**
 * Shows the reply being written: at once, or, within REPLY_RENDER_MS of the last time, once
 * that time is up, with all the text that came meanwhile. Chunks arrive many times a second
 * and each render parses the whole reply as Markdown.
 */
function showReply(reply) {
  if (reply.renderTimer) {
    return;
  }
  const wait = (reply.renderedAt ?? -Infinity) + REPLY_RENDER_MS - performance.now();
  if (wait > 0) {
    reply.renderTimer = setTimeout(() => {
      reply.renderTimer = null;
      if (state.replies.get(reply.conversationId) === reply) {
        showReply(reply);
      }
    }, wait);
    return;
  }
  reply.renderedAt = performance.now();
  renderReply(reply);
}

/** Updates the reply being written in place. */
function renderReply(reply) {
  if (state.current?.id !== reply.conversationId) {
    return;
  }
  const list = $('messages');
  const follow = nearBottom(list);
  const existing = list.querySelector('li[data-reply]');
  if (existing) {
    existing.replaceWith(replyElement(reply));
  } else {
    renderMessages();
  }
  if (follow) {
    list.scrollTop = list.scrollHeight;
  }
  updateComposer();
}

function updateComposer() {
  const conversation = state.current;
  if (!conversation) {
    return;
  }
  const reply = state.replies.get(conversation.id);
  const ended = conversation.status === 'ended';
  const connected = state.socket?.isOpen ?? false;
  const input = $('message-input');
  input.disabled = ended;
  $('send').disabled = ended || Boolean(reply) || !connected;
  $('send').title = connected ? '' : 'Not connected to the service';
  $('stop').hidden = !reply;
  $('stop').disabled = !reply || reply.stopRequested || !connected;
  $('stop').textContent = reply?.stopRequested ? 'Stopping…' : 'Stop';
}

function sendMessage() {
  const conversation = state.current;
  const input = $('message-input');
  const content = input.value;
  if (!conversation || !content.trim() || $('send').disabled) {
    return;
  }
  if (!state.socket.send('send_message', { conversation_id: conversation.id, content })) {
    updateComposer();
    return;
  }
  input.value = '';
  showSent(conversation, content);
}

/** Shows a message sent and not yet stored, with the reply it waits for. */
function showSent(conversation, content) {
  state.messages.push({
    id: null,
    local: true,
    role: 'user',
    content,
    timestamp: new Date().toISOString(),
  });
  state.replies.set(conversation.id, new Reply(conversation.id, content));
  renderMessages();
}

function stopReply() {
  const reply = state.current && state.replies.get(state.current.id);
  if (!reply) {
    return;
  }
  if (state.socket.send('stop_generation', { conversation_id: reply.conversationId })) {
    reply.stopRequested = true;
    showReply(reply);
  }
}

// ---------------------------------------------------------------------------------------
// Actions and dialogs

function showError(id, error) {
  const node = $(id);
  node.textContent = error ? error.message || String(error) : '';
  node.hidden = !error;
}

function openDialog(id) {
  const dialog = $(id);
  for (const node of dialog.querySelectorAll('.reason')) {
    node.hidden = true;
  }
  dialog.showModal();
}

async function loadModels() {
  const health = await state.api?.chatHealth().catch(() => null);
  const select = $('new-model');
  select.replaceChildren();
  const fallback = element('option', '', health ? `Service default (${health.llm_model})` : 'Service default');
  fallback.value = '';
  select.append(fallback);
  for (const model of health?.allowed_models ?? []) {
    const option = element('option', '', model);
    option.value = model;
    select.append(option);
  }
}

async function createConversation(event) {
  event.preventDefault();
  const title = $('new-title').value.trim();
  const system = $('new-system').value.trim();
  const model = $('new-model').value;
  const body = {};
  if (title) {
    body.title = title;
  }
  if (system) {
    body.system_message = system;
  }
  if (model) {
    body.model = model;
  }
  try {
    const conversation = await state.api.createConversation(body);
    $('new-dialog').close();
    $('search').value = '';
    await refreshList();
    await openConversation(conversation.id);
  } catch (error) {
    showError('new-error', error);
  }
}

async function renameConversation(event) {
  event.preventDefault();
  const title = $('rename-title').value.trim();
  if (!title) {
    showError('rename-error', new Error('The title must not be empty.'));
    return;
  }
  try {
    state.current = await state.api.updateConversation(state.current.id, { title });
    $('rename-dialog').close();
    renderConversation();
    await refreshList();
  } catch (error) {
    showError('rename-error', error);
  }
}

async function deleteConversation(event) {
  event.preventDefault();
  const id = state.current.id;
  try {
    await state.api.deleteConversation(id);
  } catch (error) {
    showError('delete-error', error);
    return;
  }
  $('delete-dialog').close();
  state.replies.delete(id);
  state.notices.delete(id);
  closeConversation();
  await refreshList();
  $('new-conversation').focus();
}

async function endConversation() {
  try {
    state.current = await state.api.endConversation(state.current.id);
    renderConversation();
    scheduleListRefresh();
  } catch (error) {
    report(error);
  }
}

async function reopenConversation() {
  try {
    const { messages, ...conversation } = await state.api.reopenConversation(state.current.id);
    state.current = conversation;
    state.messages = messages;
    state.hiddenCount = 0;
    renderConversation();
    scheduleListRefresh();
    $('message-input').focus();
  } catch (error) {
    report(error);
  }
}

async function exportConversation(format) {
  try {
    const { blob, name } = await state.api.exportConversation(state.current.id, format);
    const url = URL.createObjectURL(blob);
    const link = element('a');
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    report(error);
  }
}

function bindUi() {
  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) {
      showSignIn('Paste a token first.');
      return;
    }
    signIn(token);
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out.', 'info'));
  $('search').addEventListener('input', () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(refreshList, SEARCH_DELAY_MS);
  });
  $('new-conversation').addEventListener('click', () => {
    $('new-form').reset();
    openDialog('new-dialog');
  });
  $('new-form').addEventListener('submit', createConversation);
  $('rename').addEventListener('click', () => {
    $('rename-title').value = state.current.title;
    openDialog('rename-dialog');
    $('rename-title').select();
  });
  $('rename-form').addEventListener('submit', renameConversation);
  $('delete').addEventListener('click', () => {
    $('delete-dialog-text').textContent =
      `“${state.current.title}” and all its messages will be deleted. This cannot be undone.`;
    openDialog('delete-dialog');
  });
  $('delete-form').addEventListener('submit', deleteConversation);
  for (const button of document.querySelectorAll('dialog [data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close());
  }
  $('end').addEventListener('click', endConversation);
  $('reopen').addEventListener('click', reopenConversation);
  $('reopen-inline').addEventListener('click', reopenConversation);
  $('export-md').addEventListener('click', () => exportConversation('markdown'));
  $('export-json').addEventListener('click', () => exportConversation('json'));
  $('back').addEventListener('click', closeConversation);
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    sendMessage();
  });
  $('message-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing
      && !event.ctrlKey && !event.altKey && !event.metaKey) {
      event.preventDefault();
      sendMessage();
    }
  });
  $('stop').addEventListener('click', stopReply);
}

/** A `#token=` link opened in a tab that already shows the page. */
function takeLinkToken() {
  const token = takeTokenFromFragment();
  if (token === null) {
    return;
  }
  if (state.api) {
    signOut();
  }
  signIn(token);
}

function start() {
  bindUi();
  window.addEventListener('hashchange', takeLinkToken);
  const fromLink = takeTokenFromFragment();
  if (fromLink !== null) {
    // Kept at once, so a reload still has it if the service cannot be reached now.
    storeToken(fromLink);
  }
  const token = fromLink ?? storedToken();
  if (token) {
    signIn(token);
  } else {
    showSignIn();
  }
}

start();
