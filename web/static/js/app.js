// QuickScale's own script: the page's Alpine component and how htmx
// errors are shown. It is a file, not inline, so that the site's Content
// Security Policy allows scripts from the site only (script-src 'self'),
// with Alpine's CSP build, which evaluates no code from attributes.

document.addEventListener("alpine:init", function () {
  // disclosure: something shown or hidden by a button (the navigation
  // menu on a phone, an email's text in the dev mailbox). close (for
  // Escape) gives the focus back to the button marked x-ref="toggle".
  window.Alpine.data("disclosure", function () {
    return {
      open: false,
      toggle: function () { this.open = !this.open; },
      close: function () {
        if (!this.open) { return; }
        this.open = false;
        if (this.$refs.toggle) { this.$refs.toggle.focus(); }
      },
      get activeClass() { return this.open ? "is-active" : ""; },
      get expanded() { return this.open ? "true" : "false"; },
      get label() { return this.open ? "Hide" : "Show"; },
    };
  });

  // printer: a Print button (the browser's print dialog, which can also
  // save a PDF), shown where printing is possible.
  window.Alpine.data("printer", function () {
    return {
      get available() { return typeof window.print === "function"; },
      print: function () { window.print(); },
    };
  });

  // copy: a Copy button for the text of the element marked x-ref="text"
  // (a new API key). The button shows only where the browser lets pages
  // write to the clipboard (https, or localhost).
  window.Alpine.data("copy", function () {
    return {
      copied: false,
      failed: false,
      get available() { return !!(window.isSecureContext && navigator.clipboard); },
      get copyLabel() { return this.failed ? "Copy failed: select the text" : (this.copied ? "Copied" : "Copy"); },
      copy: function () {
        var self = this;
        navigator.clipboard.writeText(this.$refs.text.textContent.trim()).then(
          function () { self.copied = true; self.failed = false; },
          function () { self.failed = true; });
      },
    };
  });
});

// showError shows the page's error box and brings it into sight (on a
// phone the page may be scrolled far below it).
function showError(text) {
  var box = document.getElementById("htmx-error");
  box.textContent = text;
  box.classList.remove("is-hidden");
  var r = box.getBoundingClientRect();
  if (r.top < 0 || r.bottom > window.innerHeight) { box.scrollIntoView({block: "nearest"}); }
}

// An error answer htmx does not swap in: show the server's own message
// (e.g. "verify your email first", "no such service") when it has one.
document.addEventListener("htmx:responseError", function (e) {
  var msg = "";
  try {
    var doc = new DOMParser().parseFromString(e.detail.xhr.responseText, "text/html");
    var m = doc.getElementById("error-message");
    if (m) { msg = m.textContent.trim(); }
  } catch (_) {}
  showError(msg || "Something went wrong while updating the page. Please reload and try again.");
});

// A result swapped in out of sight (a phone, the last service's Use
// button far below it) is scrolled into view; one in sight stays put.
document.addEventListener("htmx:afterSwap", function (e) {
  var t = e.detail.target;
  // (A page restored from htmx's history cache has no target.)
  if (!t || t.id !== "use-result") { return; }
  var r = t.getBoundingClientRect();
  if (r.top < 0 || r.bottom > window.innerHeight) { t.scrollIntoView({block: "nearest"}); }
});

// A new request starts afresh: the last one's error no longer applies.
// The button that keeps the focus (below) is noted with its request.
document.addEventListener("htmx:beforeRequest", function (e) {
  document.getElementById("htmx-error").classList.add("is-hidden");
  var elt = e.detail.elt;
  if (e.detail.xhr && elt && elt.tagName === "FORM") {
    e.detail.xhr.keepFocus = elt.querySelector("[data-keep-focus]");
    e.detail.xhr.keepFocusForm = elt.id;
  }
});

document.addEventListener("htmx:sendError", function () {
  showError("The server could not be reached. Check your connection and try again.");
});

// A button disabled while its request ran (hx-disabled-elt) lost the
// keyboard focus to the page; it gets it back, so a keyboard or screen
// reader user stays where they were. If the answer redrew the list (it
// had changed since the page was loaded), the focus goes to the same
// form's new button; if it took the button away (a service no longer
// offered), to the answer's message, never to another service's button,
// where Enter would use that one.
document.addEventListener("htmx:afterRequest", function (e) {
  var button = e.detail.xhr ? e.detail.xhr.keepFocus : null;
  if (!button || document.activeElement !== document.body) { return; }
  var formId = e.detail.xhr.keepFocusForm;
  // htmx re-enables the button after this event.
  // Without scrolling: a result brought into view (above) stays in view.
  setTimeout(function () {
    if (!button.isConnected && formId) {
      var form = document.getElementById(formId);
      button = form ? form.querySelector("[data-keep-focus]") : button;
    }
    if (button.isConnected) {
      button.focus({preventScroll: true});
      return;
    }
    var outcome = document.getElementById("use-outcome");
    if (outcome) {
      outcome.setAttribute("tabindex", "-1");
      outcome.focus({preventScroll: true});
    }
  }, 0);
});

// A double click on Use (or Enter pressed twice, or held down) spends
// once. Each answer brings the forms fresh keys, and it comes back within
// tens of milliseconds, so the second click of a double click would be a
// new spend. A form marked data-once-per-click drops a submit while its
// request runs or waits (data-busy, on that form element: a form redrawn
// or left behind by a navigation never stays busy) and for a second after
// its answer (by the form's id, so that a list redrawn by the answer keeps
// it; data-cooling marks that second), and a key held down does not
// repeat it. The Use forms of a page also queue behind each other
// (hx-sync), so their answers, and the balance each shows, arrive in
// order; a click queued behind an answer that redrew the list (it had
// changed) is not sent, and the page says so.
var onceCoolUntil = {};
var onceCoolMs = 1000;
var onceWaiting = [];
function onceForm(elt) {
  return elt && elt.closest ? elt.closest("form[data-once-per-click]") : null;
}
document.addEventListener("keydown", function (e) {
  if (e.repeat && (e.key === "Enter" || e.key === " ") && onceForm(e.target)) { e.preventDefault(); }
}, true);
document.addEventListener("submit", function (e) {
  var form = e.target;
  var fid = form.getAttribute && form.getAttribute("id");
  if (!fid || !form.hasAttribute("data-once-per-click")) { return; }
  if (form.hasAttribute("data-busy") || Date.now() < (onceCoolUntil[fid] || 0)) {
    e.preventDefault();
    e.stopImmediatePropagation();
    return;
  }
  // Busy from the submit: a request queued behind another form's counts.
  form.setAttribute("data-busy", "");
  onceWaiting.push(form);
}, true);
document.addEventListener("htmx:beforeRequest", function (e) {
  var i = onceWaiting.indexOf(e.detail.elt);
  if (i >= 0) { onceWaiting.splice(i, 1); }
});
document.addEventListener("htmx:afterRequest", function (e) {
  // The form that sent it, also when the answer redrew it (the event then
  // comes from a part of the page still there).
  var form = e.detail.requestConfig ? e.detail.requestConfig.elt : e.detail.elt;
  var id = form && form.getAttribute && form.getAttribute("id");
  if (!id || !form.hasAttribute("data-busy")) { return; }
  form.removeAttribute("data-busy");
  onceCoolUntil[id] = Date.now() + onceCoolMs;
  var now = document.getElementById(id);
  if (now) { now.setAttribute("data-cooling", ""); }
  setTimeout(function () {
    var f = document.getElementById(id);
    if (f) { f.removeAttribute("data-cooling"); }
  }, onceCoolMs);
  // After htmx has tried the request queued next: one whose form the
  // answer took away was dropped.
  setTimeout(function () {
    var dropped = onceWaiting.filter(function (f) { return !f.isConnected; });
    onceWaiting = onceWaiting.filter(function (f) { return f.isConnected; });
    if (dropped.length > 0) {
      showError("The list of services changed, so your next click was not sent and nothing was charged for it. Use the service again if you still want it.");
    }
  }, 0);
});

// htmx keeps no copies of pages for Back (historyCacheSize 0, base.html):
// a restored page would show a balance, a history or a new API key as
// they were. Back fetches the page; when it now answers an error, htmx
// swaps nothing and would leave the previous page under the restored
// address. Load the address as a whole page instead (its error page).
document.addEventListener("htmx:historyCacheMissLoadError", function () {
  window.location.reload();
});

// A form marked data-confirm="question" is sent only once the question is
// answered OK (cancelling a subscription). Without JavaScript it is sent
// at once; the page it leads to says what changed and how to undo it.
document.addEventListener("submit", function (e) {
  var form = e.target;
  var q = form.getAttribute && form.getAttribute("data-confirm");
  if (q && !window.confirm(q)) {
    e.preventDefault();
    e.stopImmediatePropagation();
  }
}, true);
