/*
 * Send Sikkert: the one place that turns a check result into a coloured row.
 *
 * Shared by the check page (/) and the Outlook task pane (/addin/taskpane.html).
 * A row never speaks by colour alone: it carries the Danish label, a shape of its own
 * per colour (house, padlock, stop sign, question mark), the reason, and for red the
 * other ways to reach the recipient. Also here: splitting addresses as pasted from
 * Outlook, and asking GET /api/check.
 */
var SendSikkert = (function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  // The API's colour names (CONTRACT "Classes") -> CSS class slugs.
  var SLUGS = { "turkis": "turkis", "grøn": "groen", "rød": "roed", "grå": "graa" };
  var CLASS_SLUGS = { internal: "turkis", tunnel: "groen", smime: "groen",
                      unsafe: "roed", unknown: "graa" };

  // One outline per colour, drawn on a 24x24 grid.
  var ICONS = {
    turkis: "M3 11 12 3l9 8M5 10v10h5v-6h4v6h5V10",                  // a house: internal
    groen: "M7 11V8a5 5 0 0 1 10 0v3M5 11h14v10H5zM12 15v2",         // a padlock: secure
    roed: "M8 3h8l5 5v8l-5 5H8l-5-5V8zM9 9l6 6M15 9l-6 6",           // a stop sign: not possible
    graa: "M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18zM9.5 9a2.5 2.5 0 1 1 3.5 2.3c-.7.3-1 1-1 1.7v.5M12 17h.01"
  };

  var ADVICE = {
    turkis: "Intern mail forlader ikke kommunens net: du behøver ikke Send Sikkert.",
    groen: "Kan sendes sikkert med Send Sikkert.",
    graa: "Prøv igen om lidt. En mail markeret Send Sikkert venter i køen, til svaret " +
          "kendes: den sendes aldrig usikkert."
  };

  // What a person can do instead when secure mail is not possible (DOMAIN.md).
  var ALTERNATIVES = [
    "Bed modtageren om en anden, sikker mailadresse.",
    "Send et brev med Digital Post fra fagsystemet (til CPR- eller CVR-nummer).",
    "Ring til modtageren.",
    "Udelad de følsomme personoplysninger, og send som almindelig mail.",
    "Send modtageren kommunens vejledning til eksterne samarbejdspartnere om at " +
      "sætte sikker mail op."
  ];

  var INVALID_LABEL = "Ikke en gyldig adresse";
  var UNREACHABLE_LABEL = "Kan ikke afgøres lige nu";
  var UNREACHABLE_REASON = "Send Sikkert-tjekket kunne ikke køre: gatewayen svarer ikke.";
  var MISSING_REASON = "Outlook oplyser ingen mailadresse for denne modtager.";

  function slug(result) {
    return SLUGS[result.colour] || CLASS_SLUGS[result["class"]] || "graa";
  }

  /** Whether the result lets a mail marked Send Sikkert go to this address. */
  function isSafe(result) {
    return result.safe === true;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function icon(name) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "row__icon");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "28");
    svg.setAttribute("height", "28");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("d", ICONS[name]);
    svg.appendChild(path);
    return svg;
  }

  /**
   * One result -> one <li>. `result` is an item of /api/check's "results", or
   * {address, error} for an address the gateway refused, {address, unreachable: true} when
   * it could not be asked, or {missing: true} for a recipient Outlook gave no address for.
   * `kind` (optional) names where the address stands: "Til", "Cc", "Bcc".
   */
  function row(result, kind) {
    var invalid = result.error !== undefined || result.missing === true;
    var colour = invalid || result.unreachable ? "graa" : slug(result);
    var li = el("li", "row row--" + colour);
    li.setAttribute("data-colour", colour);
    if (result["class"]) li.setAttribute("data-class", result["class"]);
    li.appendChild(icon(colour));
    var body = el("div", "row__body");
    var head = el("p", "row__head");
    if (kind) {
      head.appendChild(el("span", "row__kind", kind + ":"));
      head.appendChild(document.createTextNode(" "));
    }
    head.appendChild(el("span", "row__address", result.address || "(ingen adresse)"));
    if (result.name && result.name !== result.address) {
      head.appendChild(el("span", "row__name", " (" + result.name + ")"));
    }
    body.appendChild(head);

    var label = invalid ? INVALID_LABEL : result.unreachable ? UNREACHABLE_LABEL : result.label;
    body.appendChild(el("p", "row__label", label));

    var reason = el("p", "row__reason");
    reason.appendChild(el("span", "row__reason-title", "Begrundelse: "));
    var because = el("span", "", result.missing ? MISSING_REASON : invalid ? result.error :
                                 result.unreachable ? UNREACHABLE_REASON : result.reason);
    // The gateway's own reasons are written in English (they are also its log lines).
    if (!result.unreachable && !result.missing) because.setAttribute("lang", "en");
    reason.appendChild(because);
    body.appendChild(reason);

    if (colour === "roed") {
      var alt = el("div", "row__alternatives");
      alt.appendChild(el("p", "row__alternatives-title",
                         "Sikker mail er ikke mulig til denne modtager. Vælg en anden vej:"));
      var list = el("ul");
      ALTERNATIVES.forEach(function (text) { list.appendChild(el("li", "", text)); });
      alt.appendChild(list);
      body.appendChild(alt);
    } else if (ADVICE[colour] && !invalid) {
      body.appendChild(el("p", "row__advice", ADVICE[colour]));
    }
    li.appendChild(body);
    return li;
  }

  /** Replace the rows in `list` (a <ul>) with one row per result. */
  function render(list, results, kinds) {
    while (list.firstChild) list.removeChild(list.firstChild);
    results.forEach(function (result, i) {
      list.appendChild(row(result, kinds ? kinds[i] : undefined));
    });
  }

  /** A short Danish sentence for the live region: how many of each answer. */
  function summary(results) {
    var counts = { turkis: 0, groen: 0, roed: 0, graa: 0 };
    results.forEach(function (r) {
      counts[r.error !== undefined || r.missing || r.unreachable ? "graa" : slug(r)] += 1;
    });
    var parts = [];
    if (counts.turkis) parts.push(counts.turkis + " intern");
    if (counts.groen) parts.push(counts.groen + " kan få sikker mail");
    if (counts.roed) parts.push(counts.roed + " kan ikke få sikker mail");
    if (counts.graa) parts.push(counts.graa + " kan ikke afgøres");
    var n = results.length;
    return (n === 1 ? "1 adresse tjekket: " : n + " adresser tjekket: ") + parts.join(", ") + ".";
  }

  /**
   * Addresses from text as pasted from Outlook: separated by commas, semicolons, spaces
   * or new lines, each perhaps as `"Hansen, Mette" <mette@example.dk>`. Returns
   * {addresses: [...], rejected: [...]} with duplicates dropped (case-insensitive).
   */
  function splitAddresses(text) {
    var entries = [], current = "", quoted = false, angle = false;
    for (var i = 0; i < text.length; i++) {
      var c = text[i];
      if (c === '"' && !angle) quoted = !quoted;
      else if (c === "<" && !quoted) angle = true;
      else if (c === ">" && !quoted) angle = false;
      if (!quoted && !angle && (c === "," || c === ";" || c === "\n" || c === "\r")) {
        entries.push(current);
        current = "";
      } else {
        current += c;
      }
    }
    entries.push(current);
    var addresses = [], rejected = [], seen = {};
    function add(address) {
      var key = address.toLowerCase();
      if (!seen[key]) { seen[key] = true; addresses.push(address); }
    }
    entries.forEach(function (entry) {
      var bracketed = entry.match(/<([^<>]*)>/);
      if (bracketed) {
        if (bracketed[1].trim()) add(bracketed[1].trim()); else rejected.push(entry.trim());
        return;
      }
      entry.replace(/"[^"]*"/g, " ").split(/\s+/).filter(Boolean).forEach(function (word) {
        if (word.indexOf("@") >= 0) add(word); else rejected.push(word);
      });
    });
    return { addresses: addresses, rejected: rejected };
  }

  function get(url, timeoutMs) {
    var controller = typeof AbortController !== "undefined" ? new AbortController() : null;
    var timer = controller && setTimeout(function () { controller.abort(); }, timeoutMs);
    return fetch(url, { signal: controller ? controller.signal : undefined,
                        headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        return response.json().then(function (body) {
          return { status: response.status, body: body };
        });
      })
      .finally(function () { if (timer) clearTimeout(timer); });
  }

  function checkUrl(base, addresses) {
    return base + "/api/check?" + addresses.map(function (a) {
      return "address=" + encodeURIComponent(a);
    }).join("&");
  }

  /**
   * Ask the gateway about each address; resolves to one result per address, in order.
   * A malformed address gets {address, error}; if the gateway cannot be reached at all
   * (or does not answer within `timeoutMs`) the promise rejects.
   */
  function check(addresses, options) {
    options = options || {};
    var base = options.base || "";
    var timeoutMs = options.timeoutMs || 10000;
    if (!addresses.length) return Promise.resolve([]);
    return get(checkUrl(base, addresses), timeoutMs).then(function (answer) {
      if (answer.status === 200) return answer.body.results;
      if (answer.status !== 400 || addresses.length === 1) {
        if (answer.status === 400) return [{ address: addresses[0], error: answer.body.error }];
        throw new Error("the gateway answered " + answer.status);
      }
      // One address spoilt the batch: ask about each alone, so the others still show.
      return Promise.all(addresses.map(function (a) {
        return check([a], options).then(function (r) { return r[0]; });
      }));
    });
  }

  /** GET /api/departments: {departments: [{id, name, mailbox}], header}. */
  function departments(options) {
    options = options || {};
    return get((options.base || "") + "/api/departments", options.timeoutMs || 10000)
      .then(function (answer) {
        if (answer.status !== 200) throw new Error("the gateway answered " + answer.status);
        return answer.body;
      });
  }

  return {
    row: row,
    render: render,
    summary: summary,
    splitAddresses: splitAddresses,
    check: check,
    departments: departments,
    isSafe: isSafe,
    ALTERNATIVES: ALTERNATIVES
  };
})();
