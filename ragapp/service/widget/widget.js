/* ragapp chat widget: vanilla JS, no dependencies.
 *
 *   <script src="http://HOST:PORT/widget.js" data-collection="NAME" data-key="KEY" data-title="Ask the docs"></script>
 *
 * adds a launcher button that opens a chat panel answering from collection NAME of the ragapp server the
 * script came from (its `src`; another origin must be listed in `server.cors_origins`). Attributes:
 *   data-collection  the collection (default "default")      data-key    an API key, sent as a Bearer token
 *   data-title       the panel's title                       data-api    the API's base URL (default: from src)
 *   data-mode        "float" (default) or "page": the panel fills its container, no launcher
 *   data-target      page mode: a CSS selector of the element to fill (default: right after the script)
 *   data-url-params  read ?collection= and ?key= from the page's own URL (what /widget does)
 *
 * Everything lives in a shadow root, so the host page's CSS and the widget's do not mix. The host element
 * (data-testid="ragapp-widget") shows the state in data-state and the conversation in data-conversation-id.
 */
(function () {
  "use strict";

  var script = document.currentScript ||
    [].slice.call(document.querySelectorAll("script[src*='widget.js']")).pop();
  if (!script) return;

  var SVG = "http://www.w3.org/2000/svg";
  var CSS = [
    ":host{all:initial}",
    ".panel,.launcher{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2937;text-align:left}",
    ":host([data-mode=float]){position:fixed;right:20px;bottom:20px;z-index:2147483000}",
    ":host([data-mode=page]){display:block;height:100%;min-height:320px}",
    "*{box-sizing:border-box}",
    "button{font:inherit;cursor:pointer}",
    ".launcher{width:56px;height:56px;border-radius:50%;border:0;background:#2563eb;color:#fff;",
    " box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center;margin-left:auto}",
    ".launcher:hover{background:#1d4ed8}.launcher svg{width:26px;height:26px;fill:currentColor}",
    ".panel{display:flex;flex-direction:column;background:#fff;overflow:hidden}",
    ":host([data-mode=float]) .panel{position:absolute;right:0;bottom:68px;width:min(400px,calc(100vw - 40px));",
    " height:min(600px,calc(100vh - 110px));border:1px solid #e5e7eb;border-radius:14px;box-shadow:0 10px 40px rgba(0,0,0,.2)}",
    ":host([data-mode=page]) .panel{height:100%;max-width:860px;margin:0 auto;border-left:1px solid #e5e7eb;border-right:1px solid #e5e7eb}",
    ".panel[hidden]{display:none}",
    ".head{display:flex;align-items:center;gap:8px;padding:12px 16px;background:#2563eb;color:#fff}",
    ".head .title{font-weight:600;font-size:15px;flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}",
    ".head .sub{font-size:12px;opacity:.85}",
    ".head .close{background:none;border:0;color:#fff;font-size:22px;line-height:1;padding:0 4px}",
    ".log{flex:1;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:12px;background:#f9fafb}",
    ".hint{color:#6b7280;text-align:center;margin:auto 8px;font-size:13px}",
    ".msg{max-width:88%;padding:9px 13px;border-radius:14px;white-space:pre-wrap;overflow-wrap:anywhere}",
    ".user{align-self:flex-end;background:#2563eb;color:#fff;border-bottom-right-radius:4px}",
    ".bot{align-self:flex-start;background:#fff;border:1px solid #e5e7eb;border-bottom-left-radius:4px}",
    ".bot[data-state=streaming] .text:empty::before{content:'\\2026';color:#9ca3af}",
    ".bot[data-state=streaming] .text:not(:empty)::after{content:'\\258D';color:#2563eb;animation:blink 1s steps(2) infinite}",
    "@keyframes blink{50%{opacity:0}}",
    ".text code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;background:#f3f4f6;padding:1px 4px;border-radius:4px}",
    ".cite{border:0;background:#dbeafe;color:#1d4ed8;border-radius:4px;padding:0 4px;margin:0 1px;font-size:12px;font-weight:600;vertical-align:1px}",
    ".cite:hover,.cite.active{background:#2563eb;color:#fff}",
    ".sources{list-style:none;margin:10px 0 0;padding:8px 0 0;border-top:1px solid #e5e7eb;white-space:normal;display:flex;flex-direction:column;gap:4px}",
    ".sources .label{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:#6b7280}",
    ".source>button{display:flex;gap:6px;width:100%;text-align:left;border:1px solid transparent;background:none;",
    " padding:3px 6px;border-radius:6px;color:#4b5563;font-size:12.5px;align-items:baseline}",
    ".source>button:hover{background:#f3f4f6}",
    ".source .n{font-weight:600;color:#6b7280;flex:none}",
    ".source .name{overflow:hidden;text-overflow:ellipsis}",
    ".source .heading{color:#6b7280}",
    ".source.cited>button{color:#111827}.source.cited .n{color:#1d4ed8}",
    ".source.cited .name{font-weight:600}",
    ".source.active>button{border-color:#93c5fd;background:#eff6ff}",
    ".passage{margin:4px 0 6px 6px;padding:8px 10px;border-left:3px solid #93c5fd;background:#f8fafc;color:#374151;",
    " font-size:12.5px;white-space:pre-wrap;max-height:220px;overflow-y:auto}",
    ".passage[hidden]{display:none}",
    ".note{display:block;margin-top:4px;color:#6b7280;font-size:12px;font-style:italic}",
    ".bot.abstained{background:#fffbeb;border:1px dashed #f59e0b;color:#78350f}",
    ".flag{display:block;margin-bottom:4px;font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.05em;color:#b45309}",
    ".abstained .sources{border-top-color:#fcd34d}",
    ".pop{position:fixed;z-index:2147483001;width:max-content;max-width:320px;padding:8px 10px;border-radius:8px;",
    " background:#111827;color:#f9fafb;font-size:12.5px;line-height:1.4;white-space:normal;box-shadow:0 6px 20px rgba(0,0,0,.3)}",
    ".pop[hidden]{display:none}",
    ".pop .where{display:block;font-weight:600;color:#93c5fd;margin-bottom:4px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}",
    ".pop .quote{display:block;white-space:pre-wrap;max-height:180px;overflow-y:auto;border-left:3px solid #60a5fa;padding-left:8px}",
    ".pop .kind{display:block;margin-top:4px;color:#9ca3af;font-size:11px}",
    ".error{align-self:stretch;background:#fef2f2;border:1px solid #fecaca;color:#991b1b;padding:9px 13px;",
    " border-radius:10px;white-space:pre-wrap}",
    ".form{display:flex;gap:8px;padding:10px;border-top:1px solid #e5e7eb;background:#fff}",
    ".form textarea{flex:1;resize:none;font:inherit;color:inherit;padding:8px 10px;border:1px solid #d1d5db;",
    " border-radius:10px;height:40px}",
    ".form textarea:focus{outline:2px solid #93c5fd;border-color:#2563eb}",
    ".send{border:0;border-radius:10px;background:#2563eb;color:#fff;padding:0 16px;font-weight:600}",
    ".send:disabled{background:#9ca3af;cursor:default}",
  ].join("\n");

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var name in attrs || {}) {
      if (attrs[name] == null || attrs[name] === false) continue;
      if (name === "text") node.textContent = attrs[name];
      else if (name === "class") node.className = attrs[name];
      else node.setAttribute(name, attrs[name] === true ? "" : attrs[name]);
    }
    (children || []).forEach(function (c) {
      if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function basename(path) {
    var clean = String(path || "").split(/[?#]/)[0].replace(/[\\/]+$/, "");
    return clean.split(/[\\/]/).pop() || String(path || "");
  }

  // Text with `code` spans and [n] / [1, 2] markers: the markers that name a citation become buttons,
  // each handed to onMark(button, n, offset of its marker in `text`).
  function renderText(node, text, known, onMark) {
    node.textContent = "";
    var offset = 0;
    String(text).split(/(`[^`\n]+`)/).forEach(function (part) {
      var at = offset;
      offset += part.length;
      if (/^`[^`\n]+`$/.test(part)) { node.appendChild(el("code", { text: part.slice(1, -1) })); return; }
      var last = 0, re = /\[(\d+(?:\s*[,;]\s*\d+)*)\]/g, m;
      while ((m = re.exec(part))) {
        var nums = m[1].split(/\s*[,;]\s*/).map(Number);
        if (!nums.every(function (n) { return known[n]; })) continue;
        node.appendChild(document.createTextNode(part.slice(last, m.index)));
        nums.forEach(function (n) {
          var b = el("button", { type: "button", class: "cite", "data-testid": "ragapp-cite", "data-n": n,
            "aria-label": "source " + n + ": " + known[n].label, text: "[" + n + "]" });
          onMark(b, n, at + m.index);
          node.appendChild(b);
        });
        last = re.lastIndex;
      }
      node.appendChild(document.createTextNode(part.slice(last)));
    });
  }

  var MARKS = /\[\d+(?:\s*[,;]\s*\d+)*\]/;

  // Where each of `sentences` starts in `text` (-1 where it cannot be found), searching in order. A sentence's
  // text is tried whole, without a leading mark, up to its first mark, then by its first words.
  function sentenceStarts(text, sentences) {
    var from = 0;
    return sentences.map(function (s) {
      var whole = String(s && s.text || "").replace(/^(?:\s*\[[\d,;\s]+\])+\s*/, "").trim();
      var head = whole.split(MARKS)[0].trim();
      var probes = [whole, head, head.slice(0, 24)];
      for (var i = 0; i < probes.length; i++) {
        var at = probes[i] ? text.indexOf(probes[i], from) : -1;
        if (at >= 0) { from = at + probes[i].length; return at; }
      }
      return -1;
    });
  }

  // Characters [start, end) of `text` as the server counts them (code points, not UTF-16 units).
  function span(text, start, end) {
    var chars = Array.from(text);
    return start >= 0 && end > start && end <= chars.length ? chars.slice(start, end).join("") : null;
  }

  function opening(text, limit) {
    text = String(text || "").trim();
    if (text.length <= limit) return text;
    var cut = text.slice(0, limit), space = cut.lastIndexOf(" ");
    return (space > limit / 2 ? cut.slice(0, space) : cut) + "\u2026";
  }

  // Server-sent events from a fetch body: calls onData(payload) for each event's data.
  async function readEvents(body, onData) {
    var reader = body.getReader(), decoder = new TextDecoder(), buffer = "";
    function flush(block) {
      var data = block.split(/\r?\n/).filter(function (l) { return l.indexOf("data:") === 0; })
        .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\n");
      if (data) onData(data);
    }
    for (;;) {
      var step = await reader.read();
      buffer += step.done ? decoder.decode() : decoder.decode(step.value, { stream: true });
      var blocks = buffer.split(/\r?\n\r?\n/);
      buffer = step.done ? "" : blocks.pop();
      blocks.forEach(flush);
      if (step.done) return;
    }
  }

  function Widget(options) {
    this.o = options;
    this.messages = [];
    this.conversationId = null;
    this.busy = false;
    var host = this.host = el("div", { "data-testid": "ragapp-widget", "data-mode": options.mode,
      "data-collection": options.collection, "data-state": "idle" });
    var root = host.attachShadow({ mode: "open" });
    root.appendChild(el("style", { text: CSS }));
    var self = this, panelId = "ragapp-panel";
    this.log = el("div", { class: "log", role: "log", "aria-live": "polite", "data-testid": "ragapp-log" }, [
      el("p", { class: "hint", text: "Ask a question about \u201c" + options.collection +
        "\u201d. Answers cite their sources as [n]: point at one to see its quote, click it to read the passage." }),
    ]);
    this.input = el("textarea", { rows: 1, placeholder: "Ask a question\u2026", "aria-label": "Your question",
      "data-testid": "ragapp-input", maxlength: 4000 });
    this.send = el("button", { type: "submit", class: "send", "data-testid": "ragapp-send", text: "Send" });
    var form = el("form", { class: "form" }, [this.input, this.send]);
    var close = options.mode === "float" &&
      el("button", { type: "button", class: "close", "aria-label": "Close", "data-testid": "ragapp-close", text: "\u00d7" });
    this.panel = el("div", { class: "panel", id: panelId, role: "dialog", "aria-label": options.title,
      "data-testid": "ragapp-panel", hidden: options.mode === "float" }, [
      el("div", { class: "head" }, [
        el("div", { class: "title", text: options.title }),
        el("div", { class: "sub", text: options.collection }),
        close,
      ]),
      this.log, form,
    ]);
    if (options.mode === "float") {
      this.launcher = el("button", { type: "button", class: "launcher", "aria-label": "Open chat: " + options.title,
        "aria-expanded": "false", "aria-controls": panelId, "data-testid": "ragapp-launcher" });
      var svg = document.createElementNS(SVG, "svg"), path = document.createElementNS(SVG, "path");
      svg.setAttribute("viewBox", "0 0 24 24");
      svg.setAttribute("aria-hidden", "true");
      path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z");
      svg.appendChild(path);
      this.launcher.appendChild(svg);
      this.launcher.addEventListener("click", function () { self.toggle(); });
      close.addEventListener("click", function () { self.toggle(false); });
      root.appendChild(this.launcher);
    }
    root.appendChild(this.panel);
    // The quote of the [n] mark pointed at, focused or tapped: one popover for the whole widget.
    this.pop = el("div", { class: "pop", id: "ragapp-quote", role: "tooltip", "data-testid": "ragapp-quote", hidden: true });
    this.pop.addEventListener("mouseenter", function () { clearTimeout(self.hiding); });
    this.pop.addEventListener("mouseleave", function () { self.hideQuoteSoon(); });
    this.panel.appendChild(this.pop);
    this.log.addEventListener("scroll", function () { if (self.mark) self.place(self.mark); });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape" && self.mark) self.hideQuote(); });
    document.addEventListener("pointerdown", function (e) {  // a tap elsewhere closes a tapped quote
      var path = e.composedPath();
      if (self.mark && path.indexOf(self.mark) < 0 && path.indexOf(self.pop) < 0) self.hideQuote();
    });
    form.addEventListener("submit", function (e) { e.preventDefault(); self.ask(); });
    this.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.ask(); }
    });
  }

  Widget.prototype.toggle = function (open) {
    if (open === undefined) open = this.panel.hidden;
    this.panel.hidden = !open;
    this.launcher.setAttribute("aria-expanded", String(open));
    if (open) this.input.focus();
  };

  Widget.prototype.add = function (node) {
    var log = this.log, hint = log.querySelector(".hint");
    if (hint) hint.remove();
    var stick = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    log.appendChild(node);
    if (stick) log.scrollTop = log.scrollHeight;
    return node;
  };

  Widget.prototype.follow = function () {
    var log = this.log;
    if (log.scrollHeight - log.scrollTop - log.clientHeight < 120) log.scrollTop = log.scrollHeight;
  };

  // Shows `mark`'s quote (mark.quote: {where, text, kind}); pinned (tapped, clicked) it stays until closed.
  Widget.prototype.showQuote = function (mark, pinned) {
    clearTimeout(this.hiding);
    var q = mark.quote, pop = this.pop;
    if (this.mark && this.mark !== mark) this.mark.removeAttribute("aria-describedby");
    this.mark = mark;
    this.pinned = pinned || this.pinned === mark ? mark : null;
    pop.textContent = "";
    pop.setAttribute("data-n", mark.getAttribute("data-n"));
    pop.setAttribute("data-kind", q.kind);
    pop.appendChild(el("span", { class: "where", "data-testid": "ragapp-quote-source", text: q.where }));
    pop.appendChild(el("span", { class: "quote", "data-testid": "ragapp-quote-text", text: q.text }));
    pop.appendChild(el("span", { class: "kind", text: q.kind === "quote" ? "What supports this sentence"
      : "Start of the passage (no quote for this sentence)" }));
    mark.setAttribute("aria-describedby", pop.id);
    this.place(mark);
  };

  Widget.prototype.hideQuote = function () {
    clearTimeout(this.hiding);
    if (this.mark) this.mark.removeAttribute("aria-describedby");
    this.mark = this.pinned = null;
    this.pop.hidden = true;
  };

  // After the pointer leaves a mark: hidden shortly, unless it moves onto the popover or the mark was tapped.
  Widget.prototype.hideQuoteSoon = function () {
    var self = this;
    clearTimeout(this.hiding);
    if (!this.pinned) this.hiding = setTimeout(function () { self.hideQuote(); }, 200);
  };

  // Next to the mark (below it, or above when there is no room), inside the panel.
  Widget.prototype.place = function (mark) {
    var pop = this.pop, r = mark.getBoundingClientRect(), box = this.panel.getBoundingClientRect();
    pop.hidden = false;
    pop.style.maxWidth = Math.max(160, Math.min(320, box.width - 16)) + "px";
    var w = pop.offsetWidth, h = pop.offsetHeight;
    var left = Math.max(box.left + 8, Math.min(r.left + r.width / 2 - w / 2, box.right - w - 8));
    var top = r.bottom + 6;
    if (top + h > box.bottom - 8 && r.top - h - 6 >= box.top + 8) top = r.top - h - 6;
    pop.style.left = left + "px";
    pop.style.top = top + "px";
  };

  Widget.prototype.state = function (state) {
    this.busy = state === "streaming";
    this.send.disabled = this.busy;
    this.host.setAttribute("data-state", state);
  };

  Widget.prototype.ask = async function () {
    var question = this.input.value.trim();
    if (!question || this.busy) return;
    this.input.value = "";
    this.state("streaming");
    this.add(el("div", { class: "msg user", "data-testid": "ragapp-question", text: question }));
    var text = el("div", { class: "text", "data-testid": "ragapp-answer-text" });
    var bubble = this.add(el("div", { class: "msg bot", "data-testid": "ragapp-answer", "data-state": "streaming" }, [text]));
    var body = { model: this.o.collection, stream: true,
      messages: this.messages.concat([{ role: "user", content: question }]) };
    if (this.conversationId) body.conversation_id = this.conversationId;
    var headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (this.o.key) headers.Authorization = "Bearer " + this.o.key;
    var answer = "", final = null, failure = null, self = this;
    try {
      var response = await fetch(this.o.api + "/v1/chat/completions",
        { method: "POST", headers: headers, body: JSON.stringify(body), credentials: "omit" });
      if (!response.ok) failure = await describe(response);
      else {
        await readEvents(response.body, function (data) {
          if (data === "[DONE]" || failure) return;
          var chunk;
          try { chunk = JSON.parse(data); } catch (e) { return; }
          if (chunk.error) { failure = "Error: " + (chunk.error.message || "the answer failed"); return; }
          var choice = (chunk.choices || [])[0] || {};
          var piece = choice.delta && choice.delta.content;
          if (piece) { answer += piece; text.appendChild(document.createTextNode(piece)); self.follow(); }
          if (choice.finish_reason) final = chunk;
        });
        if (!failure && !final) failure = "The answer was cut off (the connection closed early).";
      }
    } catch (e) {
      failure = "Could not reach the server at " + this.o.api + " (" + (e && e.message || e) + ").";
    }
    if (final) {
      if (typeof final.answer === "string") answer = final.answer;  // with the marks ragapp added, or "not found"
      this.messages.push({ role: "user", content: question }, { role: "assistant", content: answer });
      if (final.conversation_id) {
        this.conversationId = final.conversation_id;
        this.host.setAttribute("data-conversation-id", final.conversation_id);
      }
      this.finish(bubble, text, answer, final);
    } else {
      bubble.setAttribute("data-state", "error");
      if (!answer) bubble.remove();
    }
    if (failure) this.add(el("div", { class: "error", role: "alert", "data-testid": "ragapp-error", text: failure }));
    this.state(failure ? "error" : "idle");
    this.input.focus();
  };

  async function describe(response) {
    var message = "";
    try { var e = (await response.json()).error; message = e && e.message || ""; } catch (x) { /* not JSON */ }
    message = message || response.statusText || "request failed";
    if (response.status === 503) {
      var after = response.headers.get("Retry-After");
      return "The server is busy answering other questions (" + message + "). Try again " +
        (after ? "in " + after + " s." : "in a moment.");
    }
    return "Error " + response.status + ": " + message;
  }

  // After the stream: [n] markers become buttons that show their quote and open their passage, and the
  // passages are listed under the answer. A mark in sentence i shows sentence i's quote when it is from
  // passage n, else the start of passage n. An abstained answer is shown as "not found".
  Widget.prototype.finish = function (bubble, text, answer, final) {
    var citations = final.citations || [], known = {}, items = {}, self = this;
    var shown = answer.replace(/\s+$/, ""), sentences = final.sentences || [];
    var starts = sentenceStarts(shown, sentences);
    citations.forEach(function (c) {
      known[c.n] = c;
      c.label = basename(c.source) + (c.heading ? " \u2014 " + c.heading : "");
    });
    function quoteOf(n, at) {
      var c = known[n], i = -1;
      starts.forEach(function (start, j) { if (start >= 0 && start <= at) i = j; });
      var q = i >= 0 && sentences[i] && sentences[i].quote, where = "[" + n + "] " + c.label +
        (c.page != null ? " (p. " + c.page + ")" : "");
      var quoted = q && q.chunk_id === c.chunk_id ? span(String(c.text || ""), q.start, q.end) : null;
      return quoted ? { where: where, text: quoted, kind: "quote" }
        : { where: where, text: opening(c.text, 280), kind: "passage" };
    }
    function mark(b, n, at) {
      b.quote = quoteOf(n, at);
      b.addEventListener("mouseenter", function () { self.showQuote(b); });
      b.addEventListener("mouseleave", function () { self.hideQuoteSoon(); });
      b.addEventListener("focus", function () { self.showQuote(b); });
      b.addEventListener("blur", function () { if (self.pinned !== b) self.hideQuoteSoon(); });
      b.addEventListener("click", function () {
        if (self.pinned === b) self.hideQuote();  // tapped again
        else self.showQuote(b, true);
        open(n, true);
      });
    }
    function open(n, force) {
      Object.keys(items).forEach(function (k) {
        var item = items[k], on = Number(k) === n && (force || !item.classList.contains("active"));
        item.classList.toggle("active", on);
        item.querySelector("button").setAttribute("aria-expanded", String(on));
        item.querySelector(".passage").hidden = !on;
        if (on) item.scrollIntoView({ block: "nearest" });
      });
      [].forEach.call(text.querySelectorAll(".cite"), function (b) {
        b.classList.toggle("active", Number(b.getAttribute("data-n")) === n && items[n].classList.contains("active"));
      });
    }
    renderText(text, shown, known, mark);
    bubble.setAttribute("data-state", "done");
    if (final.abstained) {
      bubble.classList.add("abstained");
      bubble.setAttribute("data-abstained", "");
      bubble.insertBefore(el("span", { class: "flag", "data-testid": "ragapp-not-found",
        text: "Not found in the documents" }), text);
    }
    if (final.choices[0].finish_reason === "length") {
      bubble.setAttribute("data-truncated", "");
      bubble.appendChild(el("span", { class: "note", text: "(cut short at the answer length limit)" }));
    }
    if (!citations.length) return;
    var heading = final.abstained ? "Closest passages" : "Sources";
    var list = el("ol", { class: "sources", "data-testid": "ragapp-sources", "aria-label": heading },
      [el("li", { class: "label", "aria-hidden": "true", text: heading })]);
    citations.forEach(function (c) {
      var where = c.page != null ? " (p. " + c.page + ")" : "";
      var passage = el("div", { class: "passage", "data-testid": "ragapp-passage", "data-n": c.n, hidden: true,
        text: c.text || "" });
      var toggle = el("button", { type: "button", "aria-expanded": "false", "data-testid": "ragapp-source-toggle",
        "data-n": c.n, title: String(c.source || "") }, [
        el("span", { class: "n", text: "[" + c.n + "]" }),
        el("span", { class: "name", text: basename(c.source) + where }),
        c.heading ? el("span", { class: "heading", text: "\u2014 " + c.heading }) : null,
      ]);
      toggle.addEventListener("click", function () { open(c.n, false); });
      var item = items[c.n] = el("li", { class: "source" + (c.cited ? " cited" : ""), "data-testid": "ragapp-source",
        "data-n": c.n, "data-cited": String(!!c.cited) }, [toggle, passage]);
      list.appendChild(item);
    });
    bubble.appendChild(list);
    this.follow();
  };

  function start() {
    var d = script.dataset, params = new URLSearchParams(location.search), fromUrl = d.urlParams != null;
    var options = {
      api: (d.api || new URL(".", script.src).href).replace(/\/+$/, ""),
      collection: (fromUrl && params.get("collection")) || d.collection || "default",
      key: (fromUrl && params.get("key")) || d.key || "",
      title: d.title || "Ask the docs",
      mode: d.mode === "page" ? "page" : "float",
    };
    var widget = new Widget(options), target = d.target && document.querySelector(d.target);
    if (target) target.appendChild(widget.host);
    else if (options.mode === "page" && script.parentNode !== document.head) {
      script.parentNode.insertBefore(widget.host, script.nextSibling);
    }
    else document.body.appendChild(widget.host);
    if (options.mode === "page") widget.input.focus();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
