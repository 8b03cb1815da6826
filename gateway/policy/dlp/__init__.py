"""Data-loss prevention: CPR numbers in untagged mail (CONTRACT "Data-loss prevention").

`cpr` is the rule, `extract` the text a message holds (with `documents` for PDF, OOXML
and OpenDocument), `scan` the two together off the event loop. The pipeline asks once per
message, at its first attempt, and keeps the outcome in the spool (`model.DlpOutcome`).
"""
