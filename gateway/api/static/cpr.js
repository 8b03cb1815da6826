/*
 * CPR numbers (Danish personal ID, DDMMYY-SSSS): the rule of CONTRACT "Data-loss
 * prevention", for the Outlook add-in (task pane and send-time check).
 *
 * Ten digits DDMMYYSSSS, written DDMMYY-SSSS, DDMMYY SSSS or DDMMYYSSSS, not inside a
 * longer run of letters or digits. DDMMYY is a real date, not in the future (a substitute
 * number adds 60 to the day), in the century the 7th digit gives. It counts when written
 * with the hyphen, or when it passes modulus 11, or when "cpr" or "personnummer" (any
 * case, part of a word too) ends at most 40 characters before it. Numbers issued since
 * 2007 may fail modulus 11, so that is never required. The browser tests hold it to the
 * gateway's own rule (gateway/policy/dlp/cpr.py) on the same texts.
 */
var SendSikkertCpr = (function () {
  "use strict";

  // Like the gateway's rule (gateway/policy/dlp/cpr.py): the dashes word processors put in
  // place of the hyphen count as the hyphen, and a no-break space as the space.
  var HYPHENS = "-\u2010\u2011\u2012\u2013\u2212";
  var CANDIDATE = /(?<![\p{L}\p{N}])(\d{2})(\d{2})(\d{2})([-\u2010-\u2013\u2212 \u00a0\u202f]?)(\d{4})(?![\p{L}\p{N}])/gu;
  var KEYWORD = /cpr|personnummer/giu;
  var KEYWORD_REACH = 40;
  var WEIGHTS = [4, 3, 2, 7, 6, 5, 4, 3, 2, 1];

  /** The full year of YY by the 7th digit, or null (CONTRACT's table). */
  function year(yy, seventh) {
    if (seventh <= 3) return 1900 + yy;
    if (seventh === 4 || seventh === 9) return (yy <= 36 ? 2000 : 1900) + yy;
    return (yy <= 57 ? 2000 : 1800) + yy;
  }

  function realDate(dd, mm, yy, seventh, today) {
    var day = dd > 60 ? dd - 60 : dd;
    var y = year(yy, seventh);
    var date = new Date(Date.UTC(y, mm - 1, day));
    if (date.getUTCFullYear() !== y || date.getUTCMonth() !== mm - 1 ||
        date.getUTCDate() !== day || day < 1) {
      return false;
    }
    var now = Date.UTC(today.getFullYear(), today.getMonth(), today.getDate());
    return date.getTime() <= now;
  }

  function modulus11(digits) {
    var sum = 0;
    for (var i = 0; i < 10; i++) sum += WEIGHTS[i] * Number(digits[i]);
    return sum % 11 === 0;
  }

  function keywordBefore(text, start) {
    var from = Math.max(0, start - KEYWORD_REACH - "personnummer".length);
    var window = text.slice(from, start);
    KEYWORD.lastIndex = 0;
    var m;
    while ((m = KEYWORD.exec(window)) !== null) {
      if (start - (from + m.index + m[0].length) <= KEYWORD_REACH) return true;
    }
    return false;
  }

  /**
   * Every CPR number in `text`, as {start, end, masked} in order of appearance; `masked`
   * is DDMMYY-XXXX. `today` (a Date) is for tests; it defaults to now.
   */
  function findAll(text, today) {
    today = today || new Date();
    var found = [];
    if (!text) return found;
    CANDIDATE.lastIndex = 0;
    var m;
    while ((m = CANDIDATE.exec(text)) !== null) {
      var dd = Number(m[1]), mm = Number(m[2]), yy = Number(m[3]);
      var serial = m[5];
      if (!realDate(dd, mm, yy, Number(serial[0]), today)) continue;
      var digits = m[1] + m[2] + m[3] + serial;
      if ((m[4] && HYPHENS.indexOf(m[4]) >= 0) || modulus11(digits) ||
          keywordBefore(text, m.index)) {
        found.push({ start: m.index, end: m.index + m[0].length,
                     masked: m[1] + m[2] + m[3] + "-XXXX" });
      }
    }
    return found;
  }

  /** Whether `text` holds a CPR number. */
  function contains(text, today) {
    return findAll(text, today).length > 0;
  }

  return { findAll: findAll, contains: contains };
})();
