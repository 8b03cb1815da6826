/*
 * A stand-in for Office.js in Outlook compose mode, for the browser tests only.
 *
 * It follows the real API's shapes: methods take (args..., [options], callback), answer
 * later (never synchronously) with an AsyncResult {status, value, error, asyncContext},
 * Office.onReady resolves with {host, platform}, roaming settings are saved by
 * saveAsync, event handlers get an event whose completed() ends them. The test sets the
 * mail with window.__officeState (an init script) and drives it through window.__office.
 * What Outlook would show for a Smart Alert is drawn on the page, for the screenshot.
 */
(function () {
  "use strict";
  var state = window.__officeState || {};
  var mail = {
    to: state.to || [], cc: state.cc || [], bcc: state.bcc || [],
    subject: state.subject || "", body: state.body || "",
    headers: Object.assign({}, state.headers || {})
  };
  var mailboxVersion = state.mailbox || "1.14";
  var ROAMING = "office-stub-roaming";
  var handlers = {};
  var actions = {};

  function asyncResult(value, error, options) {
    return {
      status: error ? "failed" : "succeeded",
      value: error ? undefined : value,
      error: error ? { name: error, message: error, code: 9000 } : undefined,
      asyncContext: options && options.asyncContext,
      diagnostics: undefined
    };
  }

  // Office.js signatures: the callback is last; an options object may stand before it.
  function answer(args, value, error) {
    var list = Array.prototype.slice.call(args);
    var callback = typeof list[list.length - 1] === "function" ? list.pop() : null;
    var options = list.length && typeof list[list.length - 1] === "object" ? list.pop() : {};
    var result = asyncResult(typeof value === "function" ? value() : value, error, options);
    if (callback) setTimeout(function () { callback(result); }, 5);
  }

  function recipients(kind) {
    return {
      getAsync: function () {
        var args = arguments;
        answer(args, function () {
          return mail[kind].map(function (r) {
            return { displayName: r.displayName || r.emailAddress || "",
                     emailAddress: r.emailAddress || "",
                     recipientType: r.recipientType || "externalUser" };
          });
        }, state.fail && state.fail.indexOf(kind) >= 0 ? "GenericResponseError" : null);
      }
    };
  }

  function versionAtLeast(have, want) {
    var a = have.split(".").map(Number), b = String(want).split(".").map(Number);
    for (var i = 0; i < Math.max(a.length, b.length); i++) {
      if ((a[i] || 0) !== (b[i] || 0)) return (a[i] || 0) > (b[i] || 0);
    }
    return true;
  }

  function roamingLoad() {
    try { return JSON.parse(localStorage.getItem(ROAMING) || "{}"); } catch (e) { return {}; }
  }
  var roaming = roamingLoad();
  var roamingSaved = JSON.stringify(roaming);

  var item = {
    itemType: "message",
    to: recipients("to"), cc: recipients("cc"), bcc: recipients("bcc"),
    subject: { getAsync: function () { answer(arguments, function () { return mail.subject; }); } },
    body: {
      getAsync: function (coercionType) {
        var rest = Array.prototype.slice.call(arguments, 1);
        answer(rest, function () {
          return coercionType === "html" ? "<p>" + mail.body + "</p>" : mail.body;
        }, coercionType === "text" || coercionType === "html" ? null : "InvalidCoercion");
      }
    },
    internetHeaders: {
      getAsync: function (names) {
        var rest = Array.prototype.slice.call(arguments, 1);
        answer(rest, function () {
          var found = {};
          names.forEach(function (n) {
            Object.keys(mail.headers).forEach(function (h) {
              if (h.toLowerCase() === n.toLowerCase()) found[h] = mail.headers[h];
            });
          });
          return found;
        });
      },
      setAsync: function (headers) {
        var rest = Array.prototype.slice.call(arguments, 1);
        Object.keys(headers).forEach(function (h) { mail.headers[h] = String(headers[h]); });
        answer(rest, undefined);
      }
    },
    addHandlerAsync: function (eventType, handler) {
      var rest = Array.prototype.slice.call(arguments, 2);
      (handlers[eventType] = handlers[eventType] || []).push(handler);
      answer(rest, undefined);
    }
  };

  function drawAlert(options) {
    var box = document.createElement("div");
    box.setAttribute("role", "alertdialog");
    box.setAttribute("aria-label", "Outlook (stand-in for the test)");
    box.id = "stub-alert";
    var s = box.style;
    s.fontFamily = "Segoe UI, system-ui, sans-serif"; s.maxWidth = "34rem"; s.margin = "2rem";
    s.padding = "1rem 1.25rem"; s.border = "1px solid #888"; s.borderRadius = "6px";
    s.boxShadow = "0 4px 16px rgba(0,0,0,.2)"; s.background = "#fff"; s.color = "#1b1b1b";
    var title = document.createElement("p");
    title.style.fontWeight = "700";
    title.textContent = options.allowEvent ? "Outlook: mailen sendes"
      : "Send Sikkert (Smart Alerts" + (options.sendModeOverride ? ", advarsel)" : ")");
    box.appendChild(title);
    if (!options.allowEvent) {
      var text = document.createElement("p");
      text.textContent = options.errorMessage || "";
      box.appendChild(text);
      var buttons = document.createElement("p");
      [options.sendModeOverride ? "Send alligevel" : null, options.cancelLabel || "Send ikke"]
        .filter(Boolean).forEach(function (label) {
          var b = document.createElement("span");
          b.textContent = label;
          b.style.display = "inline-block"; b.style.marginRight = "0.5rem";
          b.style.padding = "0.3rem 0.9rem"; b.style.border = "1px solid #555";
          b.style.borderRadius = "4px";
          buttons.appendChild(b);
        });
      box.appendChild(buttons);
    }
    document.body.appendChild(box);
  }

  window.Office = {
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    CoercionType: { Text: "text", Html: "html" },
    EventType: { RecipientsChanged: "olkRecipientsChanged" },
    PlatformType: { PC: "PC", OfficeOnline: "OfficeOnline", Mac: "Mac" },
    HostType: { Outlook: "Outlook" },
    MailboxEnums: {
      SendModeOverride: { PromptUser: "promptUser" },
      RecipientType: { ExternalUser: "externalUser", User: "user",
                       DistributionList: "distributionList", Other: "other" }
    },
    context: {
      platform: "OfficeOnline",
      requirements: {
        isSetSupported: function (name, version) {
          return name === "Mailbox" && versionAtLeast(mailboxVersion, version || "1.1");
        }
      },
      roamingSettings: {
        get: function (name) { return roaming[name]; },
        set: function (name, value) { roaming[name] = value; },
        remove: function (name) { delete roaming[name]; },
        saveAsync: function () {
          roamingSaved = JSON.stringify(roaming);
          localStorage.setItem(ROAMING, roamingSaved);
          answer(arguments, undefined);
        }
      },
      mailbox: { item: item }
    },
    actions: { associate: function (name, fn) { actions[name] = fn; } },
    onReady: function (callback) {
      var info = { host: "Outlook", platform: "OfficeOnline" };
      return new Promise(function (resolve) {
        setTimeout(function () { if (callback) callback(info); resolve(info); }, 10);
      });
    }
  };

  // The test's handle on the stand-in.
  window.__office = {
    setRecipients: function (kind, list) { mail[kind] = list; },
    fireRecipientsChanged: function () {
      (handlers["olkRecipientsChanged"] || []).forEach(function (h) {
        h({ type: "olkRecipientsChanged",
            changedRecipientFields: { to: true, cc: true, bcc: true } });
      });
      return (handlers["olkRecipientsChanged"] || []).length;
    },
    headers: function () { return Object.assign({}, mail.headers); },
    savedRoaming: function () { return JSON.parse(roamingSaved); },
    send: function (name) {
      return new Promise(function (resolve, reject) {
        var handler = actions[name || "onMessageSendHandler"];
        if (!handler) { reject(new Error("no handler associated")); return; }
        var started = performance.now();
        handler({
          type: "olkMessageSend",
          completed: function (options) {
            options = options || {};
            drawAlert(options);
            resolve({ options: options, ms: performance.now() - started });
          }
        });
      });
    }
  };
})();
