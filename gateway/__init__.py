"""send-sikkert: a secure-mail gateway that decides, per recipient, how a mail can go safely."""
