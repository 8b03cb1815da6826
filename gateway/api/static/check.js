/*
 * The check page: read the "Til" field, ask /api/check, show one coloured row per address.
 * The rows come from rows.js, the same code the Outlook task pane uses.
 */
(function () {
  "use strict";

  var form = document.getElementById("check-form");
  var field = document.getElementById("til");
  var fieldError = document.getElementById("til-fejl");
  var status = document.getElementById("status");
  var list = document.getElementById("results");
  var button = form.querySelector("button");

  function showFieldError(text) {
    fieldError.textContent = text;
    fieldError.hidden = !text;
    if (text) field.setAttribute("aria-invalid", "true");
    else field.removeAttribute("aria-invalid");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var parsed = SendSikkert.splitAddresses(field.value);
    if (!parsed.addresses.length) {
      showFieldError(parsed.rejected.length
        ? "Ingen mailadresse fundet i: " + parsed.rejected.join(", ")
        : "Skriv mindst én mailadresse.");
      field.focus();
      return;
    }
    showFieldError(parsed.rejected.length
      ? "Sprunget over, ikke en mailadresse: " + parsed.rejected.join(", ") : "");
    button.disabled = true;
    list.setAttribute("aria-busy", "true");
    status.textContent = "Tjekker " + parsed.addresses.length +
      (parsed.addresses.length === 1 ? " adresse …" : " adresser …");
    SendSikkert.check(parsed.addresses, { base: "." })
      .then(function (results) {
        SendSikkert.render(list, results);
        status.textContent = SendSikkert.summary(results);
      })
      .catch(function () {
        SendSikkert.render(list, parsed.addresses.map(function (a) {
          return { address: a, unreachable: true };
        }));
        status.textContent = "Tjekket kunne ikke køre: gatewayen svarer ikke. Prøv igen om lidt.";
      })
      .finally(function () {
        button.disabled = false;
        list.removeAttribute("aria-busy");
      });
  });
})();
