/* sponsord embed: a live wall of bunny loaves, one per supporter.
 *
 * Add one line to any page whose origin is in the server's allowed_origins:
 *
 *   <div data-sponsor-wall></div><script src="{{ public_url }}/embed.js" defer></script>
 *
 * Optional attributes on the div: data-join-url="..." (where the empty spots
 * link; default: the server's join_url) and data-theme="light|dark" (default:
 * follow the visitor's prefers-color-scheme).
 *
 * The wall lives in a Shadow DOM, so its styles neither leak into the host page
 * nor pick up the host's. It stays live over the best transport that works:
 *
 *   WebSocket  (full_state frames; full-jitter backoff reconnect, a watchdog,
 *       │       a prompt check when the tab becomes visible again)
 *       ▼ the socket never worked after WS_TRIES attempts
 *   long-poll  (GET /v1/supporters/poll?since=<version>)
 *       ▼ never worked after POLL_TRIES attempts
 *   one GET /v1/supporters, then the ladder is tried again later;
 *   a friendly message when nothing could be shown at all.
 *
 * Supporter names are user input: they only ever reach the page through
 * textContent. No innerHTML anywhere in this file.
 */
(function () {
  "use strict";

  if (window.__sponsordWall) {
    return; // the snippet pasted twice: one connection serves every wall
  }
  window.__sponsordWall = true;

  var API = {{ public_url|tojson }}.replace(/\/+$/, "");
  var JOIN_URL = {{ join_url|tojson }};
  var WS_URL = API.replace(/^http/, "ws") + "/v1/supporters/websocket";

  var ANONYMOUS = "Anonymous"; // the title the server gives hidden supporters
  var BACKOFF_BASE = 1000; // ms; reconnect n waits random(0, min(cap, base * 2^n))
  var BACKOFF_CAP = 30000; // ms; a restarted server gets its pages back within 30 s
  var WATCHDOG = 60000; // ms without a frame before the socket is checked (server pings every 25 s)
  var CONNECT_TIMEOUT = 10000; // ms for a WebSocket handshake; some proxies hang it
  var WS_TRIES = 3; // failed sockets in a row, none ever working, before long-poll
  var POLL_TRIES = 3; // failed long-polls in a row, none ever working, before plain GET
  var POLL_TIMEOUT = 70000; // ms; the server holds a poll 55 s at most
  var POLL_RETRY = 5000; // ms after a 503 (Retry-After is not readable cross-origin)
  var LADDER_RETRY = 120000; // ms before a wall on plain GET tries the live transports again
  var HIGHLIGHT = 4000; // ms a new loaf stays highlighted
  var MAX_SLOTS = 500; // empty spots drawn at most, whatever the goal says

  var SVG = "http://www.w3.org/2000/svg";
  var FURS = [
    ["#f6e7cf", "#fffaf1"], // cream
    ["#dba46c", "#f3d3ad"], // caramel
    ["#b07a4f", "#deb892"], // cinnamon
    ["#c9c2ba", "#ece8e3"], // grey
    ["#fbf8f4", "#ffffff"], // white
    ["#6e5d52", "#a8978a"], // chocolate
    ["#eaa867", "#f7d6b0"], // ginger
  ];

  // ---------------------------------------------------------------- styles

  var DARK =
    "--sw-bg:#211c26;--sw-fg:#f3ece6;--sw-muted:#b9aea5;--sw-line:#120f14;" +
    "--sw-track:#3a3242;--sw-slot:#6f6478;--sw-tip-bg:#f3ece6;--sw-tip-fg:#211c26;" +
    "--sw-focus:#8fb8ff;--sw-shadow:rgba(0,0,0,.35);--sw-border:#3a3242;";

  var CSS = [
    ":host{all:initial;display:block;",
    "--sw-bg:#fffaf3;--sw-fg:#2d2620;--sw-muted:#6b5e52;--sw-line:#3b3029;--sw-track:#f0e4d6;",
    "--sw-slot:#b9a793;--sw-tip-bg:#2d2620;--sw-tip-fg:#fffaf3;--sw-focus:#1d5fd6;",
    "--sw-shadow:rgba(59,48,41,.14);--sw-border:#efe3d4;--sw-accent:#e0709a;",
    "font:400 15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',sans-serif;",
    "color:var(--sw-fg);}",
    "@media (prefers-color-scheme:dark){:host(:not([data-theme=light])){" + DARK + "}}",
    ":host([data-theme=dark]){" + DARK + "}",
    ":host([hidden]){display:none}",
    "*,*::before,*::after{box-sizing:border-box}",
    ".sw{container-type:inline-size;background:var(--sw-bg);color:var(--sw-fg);",
    "border:1px solid var(--sw-border);border-radius:16px;padding:16px;max-width:100%;overflow-x:clip}",
    ".sw-head{display:flex;flex-wrap:wrap;align-items:center;gap:6px 14px;margin:0 0 14px}",
    ".sw-goal{margin:0;font-size:1.05em;white-space:nowrap}",
    ".sw-count{font-weight:700;font-variant-numeric:tabular-nums;font-size:1.25em}",
    ".sw-label{color:var(--sw-muted)}",
    ".sw-bar{flex:1 1 160px;min-width:120px;height:12px;border-radius:999px;",
    "background:var(--sw-track);overflow:hidden}",
    ".sw-fill{display:block;height:100%;width:0;border-radius:inherit;",
    "background:linear-gradient(90deg,#f4b3c8,var(--sw-accent));transition:width .6s ease}",
    ".sw-grid{list-style:none;margin:0;padding:0;display:grid;gap:10px 8px;",
    "grid-template-columns:repeat(auto-fill,minmax(80px,1fr))}",
    "@container (max-width:420px){.sw-grid{grid-template-columns:repeat(auto-fill,minmax(54px,1fr));gap:8px 6px}}",
    ".sw-cell{position:relative;min-width:0}",
    ".sw-loaf,.sw-slot{all:unset;box-sizing:border-box;display:block;position:relative;width:100%;",
    "padding:4px;border-radius:12px;cursor:pointer;-webkit-tap-highlight-color:transparent;",
    "transition:transform .2s ease}",
    ".sw-loaf:hover,.sw-slot:hover,.sw-show{transform:translateY(-2px)}",
    ".sw-loaf:focus-visible,.sw-slot:focus-visible{outline:3px solid var(--sw-focus);outline-offset:2px}",
    ".sw-art{display:block;width:100%;height:auto;overflow:visible}",
    ".sw-art .ln{stroke:var(--sw-line);stroke-width:1.6;stroke-linejoin:round}",
    ".sw-art .edge{stroke:var(--sw-line);stroke-width:3.2;stroke-linejoin:round}",
    ".sw-art .fur{fill:var(--fur)}.sw-art .pale{fill:var(--pale)}",
    ".sw-art .pink{fill:#f2a0b5}.sw-art .ink{fill:var(--sw-line)}",
    ".sw-art .shade{fill:var(--sw-shadow)}",
    ".sw-art .glasses{fill:#1b1720;stroke:#1b1720}.sw-art .glint{fill:#fff;opacity:.7}",
    ".sw-flip .sw-art{transform:scaleX(-1)}",
    ".sw-anon{--fur:#9a93a8;--pale:#c7c1d2}",
    ".sw-slot .sw-art .fur{fill:var(--sw-bg)}",
    ".sw-slot .sw-art .ln,.sw-slot .sw-art .edge{stroke:var(--sw-slot);stroke-dasharray:3 3}",
    ".sw-slot .sw-art .edge{stroke-dasharray:5 4}",
    ".sw-slot .sw-art .plus{stroke:var(--sw-slot);stroke-width:2.4;stroke-linecap:round}",
    ".sw-slot:hover .sw-art .ln,.sw-slot:focus-visible .sw-art .ln,.sw-slot:hover .sw-art .edge,.sw-slot:focus-visible .sw-art .edge,",
    ".sw-slot:hover .sw-art .plus,.sw-slot:focus-visible .sw-art .plus{stroke:var(--sw-accent)}",
    // The name: visually hidden (still the loaf's accessible name) until shown.
    ".sw-name{position:absolute;top:0;left:0;width:1px;height:1px;overflow:hidden;",
    "clip-path:inset(50%);white-space:nowrap}",
    ".sw-show .sw-name{width:auto;height:auto;clip-path:none;top:auto;left:50%;bottom:calc(100% + 2px);",
    "transform:translateX(calc(-50% + var(--sw-shift,0px)));max-width:16em;text-overflow:ellipsis;",
    "padding:3px 9px;border-radius:8px;background:var(--sw-tip-bg);color:var(--sw-tip-fg);",
    "font-size:13px;line-height:1.4;z-index:2;pointer-events:none;box-shadow:0 2px 8px var(--sw-shadow)}",
    // A new loaf pops in and wears a ring for a few seconds.
    ".sw-new .sw-loaf{animation:sw-pop .7s cubic-bezier(.2,.9,.3,1.25) both}",
    ".sw-new .sw-loaf::after{content:'';position:absolute;inset:-1px;border-radius:12px;",
    "box-shadow:0 0 0 3px var(--sw-accent);animation:sw-glow " + HIGHLIGHT + "ms ease-out forwards;pointer-events:none}",
    "@keyframes sw-pop{from{transform:scale(.55) translateY(6px);opacity:0}to{transform:none;opacity:1}}",
    "@keyframes sw-glow{0%,55%{opacity:1}100%{opacity:0}}",
    ".sw-msg{margin:10px 0 0;color:var(--sw-muted)}",
    ".sw-msg a,.sw-foot a{color:inherit;text-decoration:underline}",
    ".sw-foot{margin:12px 0 0;color:var(--sw-muted);font-size:.9em}",
    ".sw-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}",
    "[hidden]{display:none!important}",
    "@media (prefers-reduced-motion:reduce){*,*::before,*::after{animation:none!important;transition:none!important}",
    ".sw-loaf:hover,.sw-slot:hover,.sw-show{transform:none}}",
    "@media (forced-colors:active){.sw-fill{background:Highlight}.sw-bar{border:1px solid CanvasText}",
    ".sw-new .sw-loaf::after{box-shadow:none;outline:3px solid Highlight}}",
  ].join("");

  // ------------------------------------------------------------- drawing

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    return fill(node, attrs, children);
  }

  function svg(tag, attrs, children) {
    return fill(document.createElementNS(SVG, tag), attrs, children);
  }

  function fill(node, attrs, children) {
    Object.keys(attrs || {}).forEach(function (name) {
      node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  // A bunny loaf seen from the side, facing left: ears laid back, a round
  // body, a cotton tail. kind: "named", "anon" (wears sunglasses) or "slot".
  function loafArt(kind) {
    var detail = kind !== "slot";
    var parts = [
      svg("ellipse", { class: "shade", cx: "35", cy: "50.5", rx: "25", ry: "2.6" }),
      svg("ellipse", { class: "fur ln", cx: "31.5", cy: "13", rx: "4.6", ry: "11", transform: "rotate(58 31.5 13)" }),
      svg("ellipse", { class: "fur ln", cx: "27", cy: "12", rx: "4.8", ry: "11.5", transform: "rotate(38 27 12)" }),
    ];
    if (detail) {
      parts.push(svg("ellipse", { class: "pink", cx: "27.6", cy: "10.6", rx: "1.9", ry: "7.4", transform: "rotate(38 27 12)" }));
    }
    // Body and head are one silhouette: a doubled stroke under the fills
    // leaves just the outer outline, no seam where the head meets the loaf.
    var body = "M12 46C9 36 15 22 31 21C47 20 60 28 60.5 39C61 46 57 48.5 51 48.5H17C14 48.5 12.6 47.6 12 46Z";
    parts.push(
      svg("path", { class: "fur edge", d: body }),
      svg("circle", { class: "fur edge", cx: "18", cy: "33", r: "11.5" }),
      svg("path", { class: "fur", d: body }),
      svg("circle", { class: "fur", cx: "18", cy: "33", r: "11.5" })
    );
    if (!detail) {
      parts.push(svg("path", { class: "plus", d: "M38 30v10M33 35h10" }));
    } else {
      parts.push(
        svg("circle", { class: "pale ln", cx: "60", cy: "36.5", r: "4.6" }),
        svg("ellipse", { class: "pale ln", cx: "15.5", cy: "47.4", rx: "5", ry: "2.2" }),
        svg("ellipse", { class: "pink", cx: "7.3", cy: "35.5", rx: "1.8", ry: "1.4" }),
        svg("ellipse", { class: "pink", cx: "15", cy: "39", rx: "2.8", ry: "1.6", opacity: ".55" })
      );
      if (kind === "anon") {
        parts.push(
          svg("path", { class: "glasses", "stroke-width": "1.4", d: "M15 29.5L27 28" }),
          svg("path", { class: "glasses", d: "M7.5 29.2h9.5v3.2a3 3 0 0 1-3 3h-3.5a3 3 0 0 1-3-3z" }),
          svg("path", { class: "glint", d: "M9.4 30.4h2.2l-1.3 2.4h-1.1z" })
        );
      } else {
        parts.push(
          svg("circle", { class: "ink", cx: "12.6", cy: "31", r: "1.9" }),
          svg("circle", { class: "glint", cx: "12", cy: "30.3", r: ".6" })
        );
      }
    }
    return svg(
      "svg",
      { class: "sw-art", viewBox: "0 0 66 54", "aria-hidden": "true", focusable: "false" },
      parts
    );
  }

  function hash(text) {
    var h = 2166136261;
    for (var i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return h >>> 0;
  }

  // --------------------------------------------------------------- a wall

  function Wall(host) {
    this.host = host;
    this.joinUrl = host.getAttribute("data-join-url") || JOIN_URL;
    this.cells = new Map(); // key → <li>, so a re-render touches only what changed
    this.rendered = false;
    var root = host.shadowRoot || host.attachShadow({ mode: "open" });
    while (root.firstChild) {
      root.removeChild(root.firstChild);
    }
    this.count = el("span", { class: "sw-count" });
    this.label = el("span", { class: "sw-label" }, ["supporters"]);
    this.fillBar = el("span", { class: "sw-fill" });
    this.bar = el(
      "div",
      { class: "sw-bar", role: "progressbar", "aria-valuemin": "0", "aria-label": "Progress towards the goal" },
      [this.fillBar]
    );
    this.head = el("div", { class: "sw-head", hidden: "" }, [
      el("p", { class: "sw-goal" }, [this.count, " ", this.label]),
      this.bar,
    ]);
    this.grid = el("ul", { class: "sw-grid", role: "list", "aria-label": "Supporters", hidden: "" });
    this.msg = el("p", { class: "sw-msg" }, ["Loading the supporters…"]);
    this.foot = el("p", { class: "sw-foot", hidden: "" }, [
      el("a", { href: this.joinUrl }, ["Add your own loaf"]),
    ]);
    this.live = el("p", { class: "sw-sr", role: "status", "aria-live": "polite" });
    root.appendChild(el("style", {}, [CSS]));
    root.appendChild(el("section", { class: "sw", "aria-label": "Supporter wall" }, [
      this.head, this.grid, this.msg, this.foot, this.live,
    ]));
    this.grid.addEventListener("pointerover", this.onPointer.bind(this, true));
    this.grid.addEventListener("pointerout", this.onPointer.bind(this, false));
    this.grid.addEventListener("focusin", this.onFocus.bind(this, true));
    this.grid.addEventListener("focusout", this.onFocus.bind(this, false));
    this.grid.addEventListener("click", this.onClick.bind(this));
    this.grid.addEventListener("keydown", this.onKey.bind(this));
    var self = this;
    document.addEventListener("pointerdown", function (event) {
      if (event.composedPath().indexOf(host) < 0) {
        self.unpinAll(null);
      }
    });
  }

  Wall.prototype.render = function (data) {
    var supporters = data.supporters;
    var goal = isFinite(data.goal_count) ? Math.max(0, Math.floor(data.goal_count)) : 0;
    var items = [];
    var seen = new Map();
    supporters.forEach(function (supporter) {
      var title = String(supporter.title == null ? "" : supporter.title).trim();
      var anon = title === "" || title === ANONYMOUS;
      var base = anon ? "a" : "n:" + title;
      var nth = seen.get(base) || 0;
      seen.set(base, nth + 1);
      items.push({ key: base + "#" + nth, kind: anon ? "anon" : "named", title: title });
    });
    var slots = Math.min(MAX_SLOTS, Math.max(0, goal - supporters.length));
    for (var s = 0; s < slots; s++) {
      items.push({ key: "slot#" + s, kind: "slot", index: s });
    }

    var old = this.cells;
    var next = new Map();
    var joined = [];
    var left = 0;
    var self = this;
    items.forEach(function (item) {
      next.set(item.key, old.get(item.key) || null);
    });
    old.forEach(function (li, key) {
      if (!next.has(key)) {
        if (key.indexOf("slot#") !== 0) {
          left++;
        }
        li.remove();
      }
    });
    items.forEach(function (item, i) {
      var li = next.get(item.key);
      if (!li) {
        li = self.cell(item);
        next.set(item.key, li);
        if (self.rendered && item.kind !== "slot") {
          joined.push(item);
          self.highlight(li);
        }
      }
      var at = self.grid.children[i] || null;
      if (at !== li) {
        self.grid.insertBefore(li, at); // moves only what is out of place
      }
    });
    this.cells = next;

    this.count.textContent = supporters.length + " / " + goal;
    this.label.textContent = supporters.length >= goal && goal > 0 ? "supporters · goal reached!" : "supporters";
    var ratio = goal > 0 ? Math.min(1, supporters.length / goal) : 1;
    this.fillBar.style.width = (ratio * 100).toFixed(2) + "%";
    this.bar.setAttribute("aria-valuemax", String(goal));
    this.bar.setAttribute("aria-valuenow", String(Math.min(supporters.length, goal)));
    this.bar.setAttribute("aria-valuetext", supporters.length + " of " + goal + " supporters");
    this.grid.setAttribute("aria-label", "Supporters: " + supporters.length + " of a goal of " + goal);
    this.head.hidden = false;
    this.grid.hidden = false;
    this.msg.hidden = true;
    this.foot.hidden = slots > 0;
    if (this.rendered && (joined.length || left)) {
      this.announce(joined, left, supporters.length, goal);
    }
    this.rendered = true;
    this.host.setAttribute("data-version", String(data.meta.version));
  };

  Wall.prototype.cell = function (item) {
    var li = el("li", { class: "sw-cell" });
    if (item.kind === "slot") {
      var link = el("a", { class: "sw-slot", href: this.joinUrl }, [
        loafArt("slot"),
        el("span", { class: "sw-name" }, ["Empty spot: become a supporter"]),
      ]);
      if (item.index > 0) {
        // One empty spot in the tab order is enough; the others are for pointers.
        link.setAttribute("tabindex", "-1");
        li.setAttribute("aria-hidden", "true");
      }
      li.appendChild(link);
      return li;
    }
    var anon = item.kind === "anon";
    var h = hash(item.title);
    var fur = FURS[h % FURS.length];
    var button = el("button", { type: "button", class: "sw-loaf" + (anon ? " sw-anon" : "") }, [
      loafArt(anon ? "anon" : "named"),
      el("span", { class: "sw-name" }, [anon ? "Anonymous supporter" : item.title]),
    ]);
    if (!anon) {
      button.style.setProperty("--fur", fur[0]);
      button.style.setProperty("--pale", fur[1]);
      if ((h >>> 8) % 3 === 0) {
        li.classList.add("sw-flip");
      }
    }
    li.appendChild(button);
    return li;
  };

  Wall.prototype.highlight = function (li) {
    li.classList.add("sw-new");
    setTimeout(function () {
      li.classList.remove("sw-new");
    }, HIGHLIGHT);
  };

  Wall.prototype.announce = function (joined, left, count, goal) {
    var names = joined.filter(function (item) {
      return item.kind === "named";
    }).map(function (item) {
      return item.title;
    });
    var anon = joined.length - names.length;
    var parts = [];
    if (joined.length && left) {
      parts.push("The supporters changed."); // a rename or a privacy switch, most likely
    } else if (left) {
      parts.push(left === 1 ? "One supporter left." : left + " supporters left.");
    } else {
      if (names.length) {
        parts.push(names.join(", ") + " joined the supporters.");
      }
      if (anon) {
        parts.push(anon === 1 ? "An anonymous supporter joined." : anon + " anonymous supporters joined.");
      }
    }
    parts.push("Now " + count + " of " + goal + ".");
    this.live.textContent = parts.join(" ");
  };

  Wall.prototype.showError = function () {
    if (this.rendered) {
      return; // stale loaves beat an error message; the ladder keeps trying
    }
    while (this.msg.firstChild) {
      this.msg.removeChild(this.msg.firstChild);
    }
    this.msg.appendChild(document.createTextNode("The supporters could not be loaded right now 💔 "));
    this.msg.appendChild(el("a", { href: this.joinUrl }, ["You can still become one."]));
    this.msg.hidden = false;
  };

  // Names show on hover, keyboard focus and tap (a tap pins until tapped
  // again, Escape, or a tap elsewhere).
  function loafOf(event) {
    var target = event.target;
    return target && target.closest ? target.closest(".sw-loaf,.sw-slot") : null;
  }

  Wall.prototype.onPointer = function (on, event) {
    var loaf = loafOf(event);
    if (loaf && !(event.relatedTarget && loaf.contains(event.relatedTarget))) {
      loaf.swHover = on && event.pointerType !== "touch";
      this.refresh(loaf);
    }
  };

  Wall.prototype.onFocus = function (on, event) {
    var loaf = loafOf(event);
    if (loaf) {
      loaf.swFocus = on;
      if (!on) {
        loaf.swPin = false;
      }
      this.refresh(loaf);
    }
  };

  Wall.prototype.onClick = function (event) {
    var loaf = loafOf(event);
    if (loaf && loaf.classList.contains("sw-loaf")) {
      var pin = !loaf.swPin;
      this.unpinAll(loaf);
      loaf.swPin = pin;
      if (!pin) {
        loaf.swFocus = false;
        loaf.swHover = false;
      }
      this.refresh(loaf);
    }
  };

  Wall.prototype.onKey = function (event) {
    var loaf = loafOf(event);
    if (loaf && event.key === "Escape") {
      loaf.swPin = loaf.swHover = loaf.swFocus = false;
      this.refresh(loaf);
    }
  };

  Wall.prototype.unpinAll = function (except) {
    var shown = this.grid.querySelectorAll(".sw-show");
    for (var i = 0; i < shown.length; i++) {
      if (shown[i] !== except) {
        shown[i].swPin = shown[i].swHover = shown[i].swFocus = false;
        this.refresh(shown[i]);
      }
    }
  };

  Wall.prototype.refresh = function (loaf) {
    var show = Boolean(loaf.swHover || loaf.swFocus || loaf.swPin);
    loaf.classList.toggle("sw-show", show);
    loaf.style.removeProperty("--sw-shift");
    if (show) {
      // Keep the name inside the wall: nudge it off the edges.
      var name = loaf.querySelector(".sw-name");
      var box = this.grid.getBoundingClientRect();
      var tip = name.getBoundingClientRect();
      var shift = 0;
      if (tip.left < box.left) {
        shift = box.left - tip.left;
      } else if (tip.right > box.right) {
        shift = box.right - tip.right;
      }
      if (shift) {
        loaf.style.setProperty("--sw-shift", Math.round(shift) + "px");
      }
    }
  };

  // ------------------------------------------------------ the transports

  var walls = [];
  var shown = null; // {version, updatedAt} of what the walls show
  var serverVersion = null; // the last version the server reported: long-poll's since=
  var mode = "websocket";
  var failures = 0; // consecutive failures of the current transport
  var worked = false; // the current transport has delivered a state at least once
  var generation = 0; // bumped to orphan the callbacks of an abandoned attempt
  var socket = null;
  var timer = null; // the one pending retry or next step
  var pending = null; // what that timer will run
  var watchdog = null;
  var lastFrame = 0;

  function backoff(n) {
    return Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * Math.pow(2, n));
  }

  function valid(data) {
    return Boolean(
      data && Array.isArray(data.supporters) && typeof data.goal_count === "number" &&
        data.meta && typeof data.meta.version === "number"
    );
  }

  // Show a state if it is newer than the one shown. `fresh` marks the first
  // state of a new connection or request: a lower version there with a later
  // timestamp means the server lost its state (a demo restart), not a stale frame.
  function accept(data, fresh) {
    if (!valid(data)) {
      return false;
    }
    var version = data.meta.version;
    var updatedAt = String(data.meta.updated_at || "");
    serverVersion = version;
    if (shown && version <= shown.version && !(fresh && version < shown.version && updatedAt > shown.updatedAt)) {
      return false;
    }
    shown = { version: version, updatedAt: updatedAt };
    walls.forEach(function (wall) {
      wall.render(data);
    });
    return true;
  }

  function setTransport(name) {
    walls.forEach(function (wall) {
      wall.host.setAttribute("data-transport", name);
    });
  }

  function later(fn, delay) {
    clearTimeout(timer);
    pending = fn;
    timer = setTimeout(function () {
      pending = null;
      fn();
    }, delay);
  }

  function now(fn) {
    clearTimeout(timer);
    pending = null;
    fn();
  }

  function fetchJSON(path) {
    return fetch(API + path, { mode: "cors", credentials: "omit", cache: "no-store" });
  }

  function start(name) {
    generation++;
    closeSocket();
    mode = name === "websocket" && !("WebSocket" in window) ? "longpoll" : name;
    failures = 0;
    worked = false;
    if (mode === "websocket") {
      now(connect);
    } else if (mode === "longpoll") {
      now(poll);
    } else {
      now(getOnce);
    }
  }

  // -- WebSocket

  function closeSocket() {
    clearTimeout(watchdog);
    if (socket) {
      var old = socket;
      socket = null;
      old.onopen = old.onmessage = old.onclose = old.onerror = null;
      try {
        old.close(1000);
      } catch (e) {
        // already closed
      }
    }
  }

  function connect() {
    var gen = ++generation;
    closeSocket();
    var ws;
    try {
      ws = new WebSocket(WS_URL);
    } catch (e) {
      socketFailed(gen);
      return;
    }
    socket = ws;
    var first = true;
    var handshake = setTimeout(function () {
      if (ws.readyState !== 1) {
        ws.close();
      }
    }, CONNECT_TIMEOUT);
    ws.onopen = function () {
      clearTimeout(handshake);
      arm();
    };
    ws.onmessage = function (event) {
      if (gen !== generation) {
        return;
      }
      arm();
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (!message || message.type !== "full_state" || !valid(message.data)) {
        return;
      }
      accept(message.data, first);
      first = false;
      failures = 0;
      worked = true;
      setTransport("websocket");
    };
    ws.onclose = function () {
      clearTimeout(handshake);
      if (gen === generation) {
        socket = null;
        clearTimeout(watchdog);
        socketFailed(gen);
      }
    };
  }

  function socketFailed(gen) {
    if (gen !== generation) {
      return;
    }
    failures++;
    if (!worked && failures >= WS_TRIES) {
      start("longpoll"); // proxies that eat upgrades, or no WebSocket at all
      return;
    }
    later(connect, backoff(failures - 1));
  }

  // The server pings every 25 s, but pings are invisible to scripts, so a
  // quiet socket looks like a dead one. After WATCHDOG without a frame, ask
  // the long-poll route without holding (wait=0): unchanged means the socket
  // has missed nothing; a newer state or no answer means reconnect.
  function arm() {
    lastFrame = Date.now();
    clearTimeout(watchdog);
    watchdog = setTimeout(check, WATCHDOG);
  }

  function check() {
    var gen = generation;
    var query = "?wait=0" + (serverVersion == null ? "" : "&since=" + serverVersion);
    fetchJSON("/v1/supporters/poll" + query)
      .then(function (response) {
        if (gen !== generation) {
          return null;
        }
        if (response.status === 204) {
          arm();
          return null;
        }
        if (response.status !== 200) {
          throw new Error("HTTP " + response.status);
        }
        return response.json().then(function (data) {
          if (gen === generation) {
            accept(data, true);
            reconnect();
          }
        });
      })
      .catch(function () {
        if (gen === generation) {
          reconnect();
        }
      });
  }

  function reconnect() {
    failures = 0;
    now(connect);
  }

  // -- long-poll

  function poll() {
    var gen = ++generation;
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var abort = setTimeout(function () {
      if (controller) {
        controller.abort();
      }
    }, POLL_TIMEOUT);
    var query = serverVersion == null ? "" : "?since=" + encodeURIComponent(serverVersion);
    var began = Date.now();
    fetch(API + "/v1/supporters/poll" + query, {
      mode: "cors",
      credentials: "omit",
      cache: "no-store",
      signal: controller ? controller.signal : undefined,
    })
      .then(function (response) {
        if (response.status === 200) {
          return response.json().then(function (data) {
            if (gen !== generation) {
              return;
            }
            if (!valid(data)) {
              throw new Error("bad payload");
            }
            accept(data, true);
            pollWorked();
            later(poll, 0);
          });
        }
        if (gen !== generation) {
          return null;
        }
        if (response.status === 204) {
          pollWorked();
          // A 204 normally comes after a long hold; never spin if one does not.
          later(poll, Date.now() - began < 1000 ? 1000 : 0);
          return null;
        }
        if (response.status === 503) {
          later(poll, POLL_RETRY * (0.5 + Math.random())); // shutting down or starting
          return null;
        }
        throw new Error("HTTP " + response.status);
      })
      .catch(function () {
        if (gen !== generation) {
          return;
        }
        failures++;
        if (!worked && failures >= POLL_TRIES) {
          start("rest");
        } else {
          later(poll, backoff(failures - 1));
        }
      })
      .then(function () {
        clearTimeout(abort);
      });
  }

  function pollWorked() {
    failures = 0;
    worked = true;
    setTransport("longpoll");
  }

  // -- one plain GET, then the live transports again after a while

  function getOnce() {
    var gen = ++generation;
    fetchJSON("/v1/supporters")
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (gen !== generation) {
          return;
        }
        if (!valid(data)) {
          throw new Error("bad payload");
        }
        accept(data, true);
        setTransport("rest");
        later(restart, LADDER_RETRY * (0.75 + Math.random() / 2));
      })
      .catch(function () {
        if (gen !== generation) {
          return;
        }
        setTransport(shown ? "rest" : "error");
        walls.forEach(function (wall) {
          wall.showError();
        });
        later(restart, LADDER_RETRY / 4 + backoff(4));
      });
  }

  function restart() {
    start("websocket");
  }

  // A tab coming back (or the network returning) should not wait out a backoff.
  function wake() {
    if (document.visibilityState === "hidden") {
      return;
    }
    if (pending) {
      var fn = pending === poll || pending === connect ? pending : restart;
      now(fn);
    } else if (mode === "websocket" && socket && socket.readyState === 1 && Date.now() - lastFrame > 5000) {
      check(); // a laptop lid closed for an hour leaves a socket that looks open
    }
  }

  function boot() {
    var hosts = document.querySelectorAll("[data-sponsor-wall]");
    for (var i = 0; i < hosts.length; i++) {
      if (typeof hosts[i].attachShadow === "function") {
        walls.push(new Wall(hosts[i]));
      }
    }
    if (!walls.length) {
      return;
    }
    setTransport("connecting");
    document.addEventListener("visibilitychange", wake);
    window.addEventListener("online", wake);
    start("websocket");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", boot);
  } else {
    boot();
  }
})();
