"""Strings that are not mailboxes: each must be refused before any lookup sees it."""

GARBAGE = [
    "", "anna", "anna@", "@x.dk", "anna@@x.dk", "a@b@x.dk", "anna hansen@x.dk",
    "anna@x..dk", "anna@.x.dk", "anna@x.dk.", "anna@-x.dk", "anna@x-.dk",
    ".anna@x.dk", "anna.@x.dk", "an..na@x.dk", "an\nna@x.dk", "anna@x.dk\r\n", "a\0@x.dk",
    "a\tb@x.dk", "anna@x\u00a0.dk", "a\u200b@x.dk", '"unterminated@x.dk', "<anna@x.dk",
    "*)(mail=*", "a" * 65 + "@x.dk", "anna@" + "x" * 64 + ".dk",
    "anna@" + ".".join(["x" * 60] * 5),
]
