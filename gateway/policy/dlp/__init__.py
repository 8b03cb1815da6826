"""Data-loss prevention: CPR numbers in untagged mail (CONTRACT "Data-loss prevention").

`cpr` is the rule (also over text that arrives in pieces), `extract` the text a message
holds, read in pieces (`pieces`: header blocks, body parts, transfer decoding; `text`:
charsets, flowed text, HTML; `documents`: PDF, OOXML and OpenDocument), and `scan` the two
together, where each message costs least without stalling the event loop. The pipeline
asks once per message, at its first attempt, and keeps the outcome in the spool
(`model.DlpOutcome`).
"""
