// chat.js — the chat panel and reaction buttons beside the stream (protocol: docs/chat.md, version 1).
//
// Builds its own panel (inside <main>, or appended to <body>) so the page needs only the <script> and <link>.
// Query parameters: name (display name; asked for otherwise, remembered in localStorage), token (join token:
// a moderator token makes this page a moderator console), stream (when the path is not /watch/<stream>).
// For tests: window.castChat = {state, uid, moderator, messages, reactions, viewers, lastError, send(text),
// react(emoji)} where reactions is the running total per emoji received.

const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;
const MAX_SHOWN = 200; // messages kept in the panel

const params = new URLSearchParams(location.search);
const segments = location.pathname.split("/").filter(Boolean);
const at = segments.indexOf("watch");
const stream = (at >= 0 && segments[at + 1] && decodeURIComponent(segments[at + 1])) || params.get("stream") || "default";
const token = params.get("token");

const chat = {
  state: "idle", // idle | connecting | joined | closed
  uid: null,
  moderator: false,
  messages: [], // {id, uid, name, text, ts, mod}
  reactions: {}, // emoji -> total received since the page loaded
  viewers: null,
  pinned: null,
  lastError: null,
  send: (text) => sendFrame({ type: "message", text }),
  react: (emoji) => sendFrame({ type: "reaction", emoji }),
};
window.castChat = chat;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

const ui = {};

function buildPanel() {
  ui.viewers = el("span", { class: "chat-viewers", id: "chat-viewers" }, "");
  ui.status = el("span", { class: "chat-status", id: "chat-status", role: "status" }, "connecting…");
  ui.pinned = el("div", { class: "chat-pinned", id: "chat-pinned", hidden: "" });
  ui.list = el("ol", { class: "chat-messages", id: "chat-messages", "aria-live": "polite" });
  ui.burst = el("div", { class: "chat-burst", id: "chat-burst", "aria-hidden": "true" });
  ui.reactions = el("div", { class: "chat-reactions", id: "chat-reactions" });
  ui.input = el("input", { id: "chat-input", type: "text", maxlength: "500", placeholder: "Say something…",
    autocomplete: "off", "aria-label": "chat message" });
  ui.form = el("form", { class: "chat-form", id: "chat-form", onsubmit: onSubmit }, ui.input,
    el("button", { type: "submit", id: "chat-send" }, "Send"));
  ui.error = el("p", { class: "chat-error", id: "chat-error", hidden: "" });
  ui.panel = el("section", { class: "chat", id: "chat", "aria-label": "chat" },
    el("header", { class: "chat-head" }, el("strong", {}, "Chat"), ui.viewers, ui.status),
    ui.pinned, ui.list, ui.burst, ui.reactions, ui.form, ui.error);
  (document.querySelector("main .panel") || document.querySelector("main") || document.body).append(ui.panel);
}

function displayName() {
  let name = params.get("name") || localStorage.getItem("castChatName");
  if (!name) name = `viewer-${Math.random().toString(36).slice(2, 6)}`;
  localStorage.setItem("castChatName", name);
  return name;
}

let ws = null;
let attempt = 0;

function connect() {
  chat.state = "connecting";
  ui.status.textContent = "connecting…";
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}/chat/${encodeURIComponent(stream)}`);
  ws.addEventListener("open", () => {
    const join = { type: "join", v: 1, name: displayName() };
    if (token) join.token = token;
    ws.send(JSON.stringify(join));
  });
  ws.addEventListener("message", (ev) => {
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    onFrame(frame);
  });
  ws.addEventListener("close", (ev) => {
    chat.state = "closed";
    const final = [4001, 4003].includes(ev.code); // unauthorized, banned: retrying will not help
    attempt += 1;
    const delay = Math.min(RECONNECT_MIN_MS * 2 ** (attempt - 1), RECONNECT_MAX_MS);
    ui.status.textContent = final ? `closed (${ev.code} ${ev.reason})` : `reconnecting in ${delay / 1000} s…`;
    if (!final) setTimeout(connect, delay * (1 + Math.random() * 0.2));
  });
}

function sendFrame(frame) {
  if (!ws || ws.readyState !== WebSocket.OPEN || chat.state !== "joined") return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      attempt = 0;
      chat.state = "joined";
      chat.uid = f.uid;
      chat.moderator = f.moderator;
      ui.status.textContent = f.moderator ? `${f.name} (moderator)` : f.name;
      ui.input.maxLength = f.limits.max_text_chars;
      ui.reactions.replaceChildren(...f.reactions.map((emoji) =>
        el("button", { type: "button", class: "chat-react", "data-emoji": emoji, title: `react ${emoji}`,
          onclick: () => chat.react(emoji) }, emoji)));
      ui.panel.classList.toggle("chat-moderator", f.moderator);
      break;
    case "history":
      chat.messages = [];
      ui.list.replaceChildren();
      f.messages.forEach(addMessage);
      setPinned(f.pinned);
      break;
    case "message":
      addMessage(f);
      break;
    case "reactions":
      for (const [emoji, n] of Object.entries(f.counts)) {
        chat.reactions[emoji] = (chat.reactions[emoji] || 0) + n;
        burst(emoji, n);
      }
      break;
    case "viewers":
      chat.viewers = f.count;
      ui.viewers.textContent = `${f.count} watching`;
      break;
    case "moderation":
      onModeration(f);
      break;
    case "error":
      chat.lastError = f;
      showError(f.retry_after ? `${f.message} (retry in ${Math.ceil(f.retry_after)} s)` : f.message);
      break;
    default:
      break; // newer server frames are ignored (forward compatible)
  }
}

function addMessage(m) {
  chat.messages.push(m);
  const item = el("li", { class: m.mod ? "chat-msg chat-mod" : "chat-msg", "data-id": String(m.id) },
    el("span", { class: "chat-name", title: m.uid }, m.name), " ", el("span", { class: "chat-text" }, m.text));
  if (chat.moderator) {
    item.append(el("span", { class: "chat-tools" },
      el("button", { type: "button", title: "delete", onclick: () => sendFrame({ type: "delete", id: m.id }) }, "✕"),
      el("button", { type: "button", title: "pin", onclick: () => sendFrame({ type: "pin", id: m.id }) }, "📌"),
      el("button", { type: "button", title: "ban", onclick: () => sendFrame({ type: "ban", uid: m.uid }) }, "⛔")));
  }
  const stick = ui.list.scrollTop + ui.list.clientHeight >= ui.list.scrollHeight - 8;
  ui.list.append(item);
  while (ui.list.children.length > MAX_SHOWN) ui.list.firstElementChild.remove();
  if (chat.messages.length > MAX_SHOWN) chat.messages.splice(0, chat.messages.length - MAX_SHOWN);
  if (stick) ui.list.scrollTop = ui.list.scrollHeight;
}

function onModeration(f) {
  if (f.action === "delete") {
    chat.messages = chat.messages.filter((m) => m.id !== f.id);
    ui.list.querySelector(`[data-id="${f.id}"]`)?.remove();
    if (chat.pinned && chat.pinned.id === f.id) setPinned(null);
  } else if (f.action === "pin") {
    setPinned(f.message);
  } else if (f.action === "slow_mode") {
    showError(f.seconds > 0 ? `Slow mode: one message every ${f.seconds} s` : "Slow mode off");
  }
}

function setPinned(message) {
  chat.pinned = message;
  ui.pinned.hidden = !message;
  ui.pinned.textContent = message ? `📌 ${message.name}: ${message.text}` : "";
}

let errorTimer = null;
function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { ui.error.hidden = true; }, 4000);
}

function burst(emoji, n) {
  for (let i = 0; i < Math.min(n, 8); i++) {
    const bubble = el("span", { class: "chat-bubble" }, emoji);
    bubble.style.left = `${10 + Math.random() * 80}%`;
    ui.burst.append(bubble);
    setTimeout(() => bubble.remove(), 1600);
  }
}

function onSubmit(ev) {
  ev.preventDefault();
  const text = ui.input.value.trim();
  if (text && chat.send(text)) ui.input.value = "";
}

buildPanel();
connect();
