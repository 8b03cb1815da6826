/*
 * The Outlook task pane, like the original "Send Sikkert" dialog staff know (DOMAIN.md):
 * Fra (the department, "Gem som standard" in the add-in's roaming settings), Til (every
 * To, Cc and Bcc recipient, checked by its SMTP address however it was entered, contacts
 * included), a field to check another address, and "Send Sikkert", which marks the mail
 * with the tag header (Mailbox 1.8) and stays grey while any recipient is not safe.
 */
(function () {
  "use strict";

  var SETTING = "department";  // roaming settings key: the department saved as default
  var API = "..";  // the gateway, relative to /addin/: works behind a path prefix too

  var departmentSelect = document.getElementById("fra");
  var saveDefault = document.getElementById("gem");
  var recipientStatus = document.getElementById("modtager-status");
  var recipientList = document.getElementById("modtagere");
  var sendButton = document.getElementById("send-sikkert");
  var sendHint = document.getElementById("send-hjaelp");
  var sendStatus = document.getElementById("send-status");
  var subjectWarning = document.getElementById("emne-advarsel");
  var checkForm = document.getElementById("tjek-form");
  var checkField = document.getElementById("tjek-adresse");
  var checkStatus = document.getElementById("tjek-status");
  var checkList = document.getElementById("tjek-resultat");

  var header = "X-Send-Sikkert";
  var item = null;
  var state = { recipients: null, results: null, cprInSubject: false, refreshing: 0 };

  function ask(call) {
    return new Promise(function (resolve, reject) {
      call(function (result) {
        if (result.status === Office.AsyncResultStatus.Succeeded) resolve(result.value);
        else reject(result.error || new Error("Outlook could not answer"));
      });
    });
  }

  // --- Fra: the department ----------------------------------------------------------------

  function loadDepartments() {
    return SendSikkert.departments({ base: API }).then(function (answer) {
      header = answer.header || header;
      var saved = Office.context.roamingSettings.get(SETTING);
      var known = answer.departments.some(function (d) { return d.id === saved; });
      answer.departments.forEach(function (d) {
        var option = document.createElement("option");
        option.value = d.id;
        option.textContent = d.name + " (" + d.mailbox + ")";
        departmentSelect.appendChild(option);
      });
      if (known) departmentSelect.value = saved;
      saveDefault.checked = known;
      if (!answer.departments.length) {
        sendHint.textContent = "Gatewayen har ingen afdelinger sat op.";
      }
    });
  }

  function persist() {
    var roaming = Office.context.roamingSettings;
    var id = departmentSelect.value;
    if (saveDefault.checked) roaming.set(SETTING, id);
    else roaming.remove(SETTING);
    roaming.saveAsync(function (result) {
      var ok = result.status === Office.AsyncResultStatus.Succeeded;
      var name = departmentSelect.options[departmentSelect.selectedIndex].textContent;
      showSendStatus(!ok ? "Standarden kunne ikke gemmes i Outlook. Prøv igen."
                     : saveDefault.checked ? name + " er gemt som standard."
                     : "Ingen afdeling er gemt som standard.");
    });
  }

  saveDefault.addEventListener("change", persist);
  departmentSelect.addEventListener("change", function () {
    if (saveDefault.checked) persist();
    updateButton();
  });

  // --- Til: the recipients ----------------------------------------------------------------

  function readRecipients() {
    return Promise.all([
      ask(function (cb) { item.to.getAsync(cb); }),
      ask(function (cb) { item.cc.getAsync(cb); }),
      ask(function (cb) { item.bcc.getAsync(cb); })
    ]).then(function (lists) {
      var kinds = ["Til", "Cc", "Bcc"], all = [];
      lists.forEach(function (list, i) {
        (list || []).forEach(function (r) {
          // The SMTP address, never the display name: a contact is checked like any address.
          all.push({ kind: kinds[i], address: (r.emailAddress || "").trim(),
                     name: r.displayName || "" });
        });
      });
      return all;
    });
  }

  function readSubject() {
    return ask(function (cb) { item.subject.getAsync(cb); }).catch(function () { return ""; });
  }

  function refresh() {
    var ticket = ++state.refreshing;
    recipientList.setAttribute("aria-busy", "true");
    return Promise.all([readRecipients(), readSubject()]).then(function (read) {
      var recipients = read[0];
      state.cprInSubject = SendSikkertCpr.contains(read[1]);
      var withAddress = recipients.filter(function (r) { return r.address; });
      var addresses = withAddress.map(function (r) { return r.address; });
      return SendSikkert.check(addresses, { base: API })
        .catch(function () {
          return withAddress.map(function (r) { return { address: r.address, unreachable: true }; });
        })
        .then(function (checked) {
          if (ticket !== state.refreshing) return;  // a newer refresh is on its way
          var k = 0;
          state.results = recipients.map(function (r) {
            var result = r.address ? checked[k++] : { address: "", missing: true };
            result.name = r.name;
            return result;
          });
          state.recipients = recipients;
          show();
        });
    }).catch(function () {
      if (ticket !== state.refreshing) return;
      state.recipients = null;
      state.results = null;
      recipientStatus.textContent = "Outlook kunne ikke vise mailens modtagere.";
      updateButton();
    }).finally(function () {
      if (ticket === state.refreshing) recipientList.removeAttribute("aria-busy");
    });
  }

  function show() {
    SendSikkert.render(recipientList, state.results,
                       state.recipients.map(function (r) { return r.kind; }));
    recipientStatus.textContent = state.results.length
      ? SendSikkert.summary(state.results) : "Mailen har ingen modtagere endnu.";
    subjectWarning.hidden = !state.cprInSubject;
    subjectWarning.textContent = state.cprInSubject
      ? "Emnet ser ud til at indeholde et CPR-nummer. Emnet krypteres aldrig: flyt " +
        "nummeret fra emnet til teksten." : "";
    updateButton();
  }

  /** Grey and inactive while any recipient is not safe, like the original dialog. */
  function updateButton() {
    var results = state.results;
    var blocked = results && results.filter(function (r) { return !SendSikkert.isSafe(r); });
    var reason = "";
    if (!results) reason = "Modtagerne er ikke tjekket.";
    else if (!results.length) reason = "Tilføj mindst én modtager.";
    else if (blocked.length) {
      reason = "Send Sikkert er spærret: " + blocked.map(function (r) {
        return r.address || r.name;
      }).join(", ") + " kan ikke få sikker mail lige nu.";
    } else if (state.cprInSubject) reason = "Fjern CPR-nummeret fra emnet.";
    else if (!departmentSelect.value) reason = "Vælg en afdeling under Fra.";
    sendButton.disabled = reason !== "";
    sendHint.textContent = reason || "Alle modtagere kan få mailen sikkert.";
  }

  function showSendStatus(text) {
    sendStatus.textContent = text;
    sendStatus.hidden = !text;
  }

  sendButton.addEventListener("click", function () {
    var id = departmentSelect.value;
    var headers = {};
    headers[header] = id;
    sendButton.disabled = true;
    item.internetHeaders.setAsync(headers, function (result) {
      updateButton();
      if (result.status === Office.AsyncResultStatus.Succeeded) {
        var name = departmentSelect.options[departmentSelect.selectedIndex].textContent;
        showSendStatus("Mailen er markeret Send Sikkert via " + name +
                       ". Tryk på Send i Outlook for at sende den.");
      } else {
        showSendStatus("Outlook kunne ikke markere mailen. Prøv igen, eller skriv " +
                       id + "%% i emnet.");
      }
    });
  });

  // --- Tjek: any other address ------------------------------------------------------------

  checkForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var parsed = SendSikkert.splitAddresses(checkField.value);
    if (!parsed.addresses.length) {
      checkStatus.textContent = "Skriv en mailadresse.";
      checkField.focus();
      return;
    }
    checkStatus.textContent = "Tjekker …";
    SendSikkert.check(parsed.addresses, { base: API }).catch(function () {
      return parsed.addresses.map(function (a) { return { address: a, unreachable: true }; });
    }).then(function (results) {
      SendSikkert.render(checkList, results);
      checkStatus.textContent = SendSikkert.summary(results);
    });
  });

  // --- start -------------------------------------------------------------------------------

  Office.onReady(function () {
    item = Office.context.mailbox.item;
    loadDepartments().catch(function () {
      sendHint.textContent = "Gatewayen svarer ikke: afdelingerne kunne ikke hentes.";
    }).then(refresh);
    // Recipients picked or removed: Mailbox 1.7 tells us; older clients when we get focus.
    if (Office.context.requirements.isSetSupported("Mailbox", "1.7")) {
      item.addHandlerAsync(Office.EventType.RecipientsChanged, function () { refresh(); });
    }
    window.addEventListener("focus", function () { refresh(); });
  });
})();
