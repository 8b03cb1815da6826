/*
 * The send-time check (Outlook Smart Alerts, OnMessageSend, Mailbox 1.12, SoftBlock).
 *
 * A mail marked Send Sikkert (the tag header, or a department's subject keyword) goes
 * only when every recipient is safe; otherwise the send is blocked and the alert names
 * the recipients that are not. An unmarked mail whose subject or body holds a CPR number
 * gets a warning that offers Send Sikkert. Everything else goes at once. The check must
 * answer within a second or two: if the gateway does not answer in time, a marked mail is
 * let through with a notice that the check could not run (the gateway itself holds or
 * bounces what cannot go safely), never blocked for good.
 *
 * Classic Outlook on Windows runs this file alone in its JavaScript-only runtime (no
 * imports), so the gateway serves it joined into one file, /addin/launchevent.js:
 * SEND_SIKKERT_CONFIG, rows.js (the check API client), cpr.js, then this.
 */
var SendSikkertOnSend = (function () {
  "use strict";

  var CHECK_TIMEOUT_MS = 1500;
  var MESSAGE_LIMIT = 500;  // Outlook cuts a Smart Alerts message longer than this
  var PANE_COMMAND = "msgComposeOpenPaneButton";  // the manifest's "Send Sikkert" button
  var NOT_MARKED = ["", "no", "0", "false"];

  var settings = typeof SEND_SIKKERT_CONFIG !== "undefined" ? SEND_SIKKERT_CONFIG : {};
  var base = settings.base || "";
  var header = settings.header || "X-Send-Sikkert";
  var departments = settings.departments || [];
  var subjectTag = compile(settings.subject);

  function compile(source) {
    try {
      return new RegExp(source || "(?<keyword>[A-Za-z0-9._-]+)%%", "u");
    } catch (e) {
      return /(?<keyword>[A-Za-z0-9._-]+)%%/u;
    }
  }

  /** Office's callback style as a promise of the value; an error rejects. */
  function ask(call) {
    return new Promise(function (resolve, reject) {
      call(function (result) {
        if (result.status === Office.AsyncResultStatus.Succeeded) resolve(result.value);
        else reject(result.error || new Error("Outlook could not answer"));
      });
    });
  }

  function readItem(item) {
    return Promise.all([
      ask(function (cb) { item.internetHeaders.getAsync([header], cb); }),
      ask(function (cb) { item.subject.getAsync(cb); }),
      ask(function (cb) { item.body.getAsync(Office.CoercionType.Text, cb); }),
      ask(function (cb) { item.to.getAsync(cb); }),
      ask(function (cb) { item.cc.getAsync(cb); }),
      ask(function (cb) { item.bcc.getAsync(cb); })
    ]).then(function (v) {
      var headerValue = "";
      Object.keys(v[0] || {}).forEach(function (name) {
        if (name.toLowerCase() === header.toLowerCase()) headerValue = String(v[0][name]);
      });
      return { headerValue: headerValue.trim(), subject: v[1] || "", body: v[2] || "",
               recipients: [].concat(v[3] || [], v[4] || [], v[5] || []) };
    });
  }

  /** Whether the mail is marked, by the tag header or a subject keyword (CONTRACT "Tagging"). */
  function marked(mail) {
    if (NOT_MARKED.indexOf(mail.headerValue.toLowerCase()) < 0) return true;
    var m = subjectTag.exec(mail.subject);
    if (!m) return false;
    var keyword = ((m.groups && m.groups.keyword) || m[1] || "").toLowerCase();
    return departments.some(function (d) { return d.id.toLowerCase() === keyword; });
  }

  function shorten(text) {
    return text.length <= MESSAGE_LIMIT ? text : text.slice(0, MESSAGE_LIMIT - 1) + "…";
  }

  function supports(version) {
    var requirements = Office.context.requirements;
    return !!(requirements && requirements.isSetSupported("Mailbox", version));
  }

  /**
   * Stop the send with a message. From Mailbox 1.14 the alert's button opens the task
   * pane, and `prompt` turns it into a warning the person may override ("Send alligevel").
   */
  function stop(event, message, prompt) {
    var options = { allowEvent: false, errorMessage: shorten(message) };
    if (supports("1.14")) {
      options.cancelLabel = "Åbn Send Sikkert";
      options.commandId = PANE_COMMAND;
      if (prompt) options.sendModeOverride = Office.MailboxEnums.SendModeOverride.PromptUser;
    }
    event.completed(options);
  }

  function describe(results) {
    var listed = results.slice(0, 5).map(function (r) {
      return r.address + " (" + (r.error !== undefined ? "ikke en gyldig adresse" : r.label) + ")";
    });
    if (results.length > 5) listed.push("og " + (results.length - 5) + " mere");
    return listed.join(", ");
  }

  function checkMarked(event, mail) {
    var missing = mail.recipients.filter(function (r) { return !r.emailAddress; });
    if (missing.length) {
      stop(event, "Send Sikkert: Outlook oplyser ingen mailadresse for " +
           missing.map(function (r) { return r.displayName; }).join(", ") +
           ". Skriv modtagerens mailadresse i stedet.");
      return Promise.resolve();
    }
    if (SendSikkertCpr.contains(mail.subject)) {
      stop(event, "Send Sikkert: emnet ser ud til at indeholde et CPR-nummer. Emnet " +
           "krypteres aldrig: flyt nummeret fra emnet til teksten.");
      return Promise.resolve();
    }
    var addresses = mail.recipients.map(function (r) { return r.emailAddress; });
    if (!addresses.length) {
      event.completed({ allowEvent: true });
      return Promise.resolve();
    }
    return SendSikkert.check(addresses, { base: base, timeoutMs: CHECK_TIMEOUT_MS })
      .then(function (results) {
        var notSafe = results.filter(function (r) { return !SendSikkert.isSafe(r); });
        if (!notSafe.length) {
          event.completed({ allowEvent: true });
          return;
        }
        stop(event, "Send Sikkert: mailen kan ikke sendes sikkert til " + describe(notSafe) +
             ". Fjern modtageren, eller vælg en anden vej: bed om en sikker adresse, " +
             "Digital Post, telefon, eller send uden de følsomme oplysninger.");
      }, function () {
        unreachable(event);
      });
  }

  /**
   * The gateway did not answer: the marked mail may go, and the person hears that the
   * check did not run. From Mailbox 1.14 that is a prompt whose "Send alligevel" sends at
   * once; older clients cannot show a message and still send, so there the mail just goes.
   */
  function unreachable(event) {
    if (!supports("1.14")) {
      event.completed({ allowEvent: true });
      return;
    }
    event.completed({
      allowEvent: false,
      errorMessage: "Send Sikkert kunne ikke tjekke modtagerne: gatewayen svarer ikke. " +
        "Mailen er markeret Send Sikkert, så gatewayen sender den kun sikkert og giver dig " +
        "besked, hvis det ikke kan lade sig gøre. Vælg Send alligevel for at sende.",
      sendModeOverride: Office.MailboxEnums.SendModeOverride.PromptUser
    });
  }

  function warnCpr(event, mail) {
    var where = [];
    if (SendSikkertCpr.contains(mail.subject)) where.push("emnet");
    if (SendSikkertCpr.contains(mail.body)) where.push("teksten");
    if (!where.length) {
      event.completed({ allowEvent: true });
      return;
    }
    stop(event, "Mailen ser ud til at indeholde et CPR-nummer (i " + where.join(" og ") +
         "), men er ikke markeret Send Sikkert. Brug Send Sikkert, så mailen kun sendes " +
         "sikkert.", true);
  }

  /** The OnMessageSend handler the manifest names. */
  function onMessageSendHandler(event) {
    readItem(Office.context.mailbox.item).then(function (mail) {
      return marked(mail) ? checkMarked(event, mail) : warnCpr(event, mail);
    }).catch(function () {
      // Outlook could not tell us about the item: the gateway stays the enforcement.
      event.completed({ allowEvent: true });
    });
  }

  Office.actions.associate("onMessageSendHandler", onMessageSendHandler);
  return { onMessageSendHandler: onMessageSendHandler };
})();
