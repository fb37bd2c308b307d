// <notify-inbox>: an embeddable in-app inbox for one recipient (docs/inbox.md, "Web component").
// Plain JavaScript, no dependencies: a bell with the unread count, the newest messages, mark
// one or all read, live over GET /api/inbox/stream, reconnecting by itself.
//
//   <script src="https://notify.example.com/static/notify/inbox.js" defer></script>
//   <notify-inbox api="https://notify.example.com" token="..."></notify-inbox>
//
// Give it a fresh token before the old one runs out: element.tokenProvider = async () => token
// (called when the stream reports "expired" or the API answers 401), or set the attribute.
(() => {
  "use strict";

  const PAGE = 20;
  const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

  const STYLE = `
    :host { position: relative; display: inline-block; font: 14px/1.4 system-ui, sans-serif; }
    button { font: inherit; cursor: pointer; }
    .bell { position: relative; background: none; border: 0; padding: 6px; border-radius: 6px; }
    .bell:focus-visible, .item:focus-visible, .all:focus-visible, .settings:focus-visible {
      outline: 2px solid #1a73e8; }
    .bell svg { width: 24px; height: 24px; display: block; }
    .badge { position: absolute; top: 0; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
      border-radius: 9px; background: #d93025; color: #fff; font-size: 11px; line-height: 18px;
      text-align: center; box-sizing: border-box; }
    .badge[hidden] { display: none; }
    .panel { position: absolute; right: 0; z-index: 1000; width: 340px; max-height: 420px;
      overflow: auto; background: #fff; color: #202124; border: 1px solid #dadce0;
      border-radius: 8px; box-shadow: 0 4px 16px rgba(0,0,0,.15); }
    .panel[hidden] { display: none; }
    header { display: flex; justify-content: space-between; align-items: center;
      padding: 8px 12px; border-bottom: 1px solid #eee; font-weight: 600; }
    .all { background: none; border: 0; color: #1a73e8; padding: 2px 4px; }
    ul { list-style: none; margin: 0; padding: 0; }
    .item { display: block; width: 100%; text-align: left; background: none; border: 0;
      border-bottom: 1px solid #f1f3f4; padding: 10px 12px; color: inherit; }
    .item.unread { background: #e8f0fe; }
    .item .title { font-weight: 600; display: block; }
    .item .body { color: #5f6368; display: block; }
    .item time { color: #80868b; font-size: 12px; }
    .empty, .status { padding: 16px 12px; color: #5f6368; }
    .status:empty { display: none; }
    footer { padding: 8px 12px; text-align: right; }
    .settings { background: none; border: 0; color: #1a73e8; padding: 2px 4px; }
  `;

  const BELL = '<svg viewBox="0 0 24 24" aria-hidden="true"><path fill="currentColor" d="M12 22a2 2 0 0 0 2-2h-4a2 2 0 0 0 2 2zm6-6V11a6 6 0 0 0-5-5.91V4a1 1 0 0 0-2 0v1.09A6 6 0 0 0 6 11v5l-2 2v1h16v-1z"/></svg>';

  class NotifyInbox extends HTMLElement {
    static get observedAttributes() { return ["token"]; }

    constructor() {
      super();
      this.messages = new Map(); // id -> message, one per id whatever arrives twice
      this.unread = 0;
      this.lastEventId = "";
      this.source = null;
      this.retries = 0;
      this.tokenProvider = null;
      const root = this.attachShadow({ mode: "open" });
      root.innerHTML = `<style>${STYLE}</style>
        <button class="bell" part="bell" aria-haspopup="true" aria-expanded="false"
          aria-label="Notifications">${BELL}<span class="badge" hidden></span></button>
        <section class="panel" part="panel" role="dialog" aria-label="Notifications" hidden>
          <header><span>Notifications</span>
            <button class="all" type="button">Mark all read</button></header>
          <div class="status" role="status" aria-live="polite"></div>
          <ul role="list"></ul>
          <footer><button class="settings" type="button">Notification settings</button></footer>
        </section>`;
      this.bell = root.querySelector(".bell");
      this.badge = root.querySelector(".badge");
      this.panel = root.querySelector(".panel");
      this.list = root.querySelector("ul");
      this.status = root.querySelector(".status");
      this.bell.addEventListener("click", () => this.toggle());
      root.querySelector(".all").addEventListener("click", () => this.markAllRead());
      root.querySelector(".settings").addEventListener("click", () => this.openSettings());
      this.panel.addEventListener("keydown", (e) => {
        if (e.key === "Escape") { this.toggle(false); this.bell.focus(); }
      });
    }

    get api() { return (this.getAttribute("api") || "").replace(/\/$/, ""); }
    get token() { return this.getAttribute("token") || ""; }

    connectedCallback() { if (this.token) this.start(); }
    disconnectedCallback() { this.closeStream(); }
    attributeChangedCallback(name, before, after) {
      if (name === "token" && before !== after && this.isConnected && after) this.start();
    }

    async start() {
      await this.refresh();
      this.openStream();
    }

    async call(method, path, retried) {
      const response = await fetch(`${this.api}${path}`, {
        method, headers: { Authorization: `Bearer ${this.token}` },
      });
      if (response.status === 401 && !retried && (await this.renewToken())) {
        return this.call(method, path, true);
      }
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status}`);
      return response.status === 204 ? null : response.json();
    }

    async renewToken() {
      if (typeof this.tokenProvider !== "function") return false;
      const token = await this.tokenProvider();
      if (!token) return false;
      this.setAttribute("token", token); // reopens the stream
      return true;
    }

    async refresh() {
      try {
        const [page, counts] = await Promise.all([
          this.call("GET", `/api/inbox?pageSize=${PAGE}`),
          this.call("GET", "/api/inbox/count"),
        ]);
        this.messages = new Map(page.results.map((m) => [m.id, m]));
        this.unread = counts.unread;
        this.status.textContent = "";
      } catch (error) {
        this.status.textContent = "Notifications are unavailable right now.";
      }
      this.render();
    }

    openStream() {
      this.closeStream();
      const query = new URLSearchParams({ token: this.token });
      if (this.lastEventId) query.set("lastEventId", this.lastEventId);
      const source = new EventSource(`${this.api}/api/inbox/stream?${query}`);
      this.source = source;
      const track = (handler) => (event) => {
        if (event.lastEventId) this.lastEventId = event.lastEventId;
        this.retries = 0;
        handler(JSON.parse(event.data || "{}"));
      };
      source.addEventListener("message", track((e) => this.received(e.message)));
      source.addEventListener("state", track((e) => this.changed(e.message)));
      source.addEventListener("all_read", track((e) => this.allRead(e.at)));
      source.addEventListener("reset", track(() => this.refresh()));
      source.addEventListener("expired", () => {
        this.closeStream();
        this.renewToken().then((renewed) => { if (!renewed) this.reconnectLater(); });
      });
      source.addEventListener("open", () => { this.dataset.live = "true"; });
      source.onerror = () => {
        this.dataset.live = "false";
        // EventSource retries by itself (sending Last-Event-ID) unless the server refused
        // the request (a 401: the token is gone); then start over with a new one.
        if (source.readyState === EventSource.CLOSED) {
          this.closeStream();
          this.renewToken().then((renewed) => { if (!renewed) this.reconnectLater(); });
        }
      };
    }

    reconnectLater() {
      const delay = RETRY_MS[Math.min(this.retries, RETRY_MS.length - 1)];
      this.retries += 1;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.isConnected && this.openStream(), delay);
    }

    closeStream() {
      if (this.source) this.source.close();
      this.source = null;
    }

    received(message) {
      if (!this.messages.has(message.id) && !message.readAt) this.unread += 1;
      this.messages.set(message.id, message);
      this.render();
      this.dispatchEvent(new CustomEvent("notify-message", { detail: message }));
    }

    changed(message) {
      const before = this.messages.get(message.id);
      const wasUnread = before ? !before.readAt : false;
      if (before) this.messages.set(message.id, message);
      if (wasUnread && message.readAt) this.unread = Math.max(0, this.unread - 1);
      if (before && !wasUnread && !message.readAt) this.unread += 1;
      this.render();
    }

    allRead(at) {
      for (const message of this.messages.values()) {
        if (!message.readAt) message.readAt = at;
      }
      this.unread = 0;
      this.render();
    }

    async markRead(message) {
      if (!message.readAt) {
        this.changed({ ...message, readAt: new Date().toISOString() });
        try {
          this.changed(await this.call("POST", `/api/inbox/${message.id}/read`));
        } catch (error) {
          await this.refresh();
        }
      }
      if (message.actionUrl) window.location.assign(message.actionUrl);
    }

    async markAllRead() {
      this.allRead(new Date().toISOString());
      try {
        await this.call("POST", "/api/inbox/read-all");
      } catch (error) {
        await this.refresh();
      }
    }

    async openSettings() {
      // The preference centre, by a signed link made for this recipient on demand.
      try {
        const { url } = await this.call("GET", "/api/inbox/preferences-link");
        window.location.assign(url);
      } catch (error) {
        this.status.textContent = "Settings are unavailable right now.";
      }
    }

    toggle(open = this.panel.hidden) {
      this.panel.hidden = !open;
      this.bell.setAttribute("aria-expanded", String(open));
      if (open) {
        const first = this.list.querySelector(".item");
        (first || this.panel.querySelector(".all")).focus();
      }
    }

    render() {
      this.badge.hidden = this.unread === 0;
      this.badge.textContent = this.unread > 99 ? "99+" : String(this.unread);
      this.bell.setAttribute(
        "aria-label", this.unread ? `Notifications, ${this.unread} unread` : "Notifications",
      );
      const newest = [...this.messages.values()].sort((a, b) => b.id - a.id).slice(0, PAGE);
      this.list.replaceChildren(...newest.map((message) => this.item(message)));
      if (!newest.length) {
        const empty = document.createElement("li");
        empty.className = "empty";
        empty.textContent = "Nothing new.";
        this.list.append(empty);
      }
    }

    item(message) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = message.readAt ? "item" : "item unread";
      button.dataset.id = message.id;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = message.title; // text, never HTML: the content is the sender's
      const body = document.createElement("span");
      body.className = "body";
      body.textContent = message.body;
      const time = document.createElement("time");
      time.dateTime = message.createdAt;
      time.textContent = new Date(message.createdAt).toLocaleString();
      button.append(title, body, time);
      button.setAttribute("aria-label", `${message.readAt ? "" : "Unread: "}${message.title}`);
      button.addEventListener("click", () => this.markRead(message));
      li.append(button);
      return li;
    }
  }

  if (!customElements.get("notify-inbox")) customElements.define("notify-inbox", NotifyInbox);
})();
