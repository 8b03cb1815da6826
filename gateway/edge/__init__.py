"""The edge: receiving mail over SMTP from Exchange/Outlook and handing it to the spool."""
