"""Inbound mail: what arrives from outside for internal recipients (CONTRACT "Inbound").

The road in the other direction: the edge accepts mail from strangers for internal
recipients only; the pipeline hands it to `receive` instead of the classifier, which
decrypts S/MIME replies to a department (`cms`), verifies the signatures inside
(`signature`), learns the signers' certificates (gateway.directory.learnt) and routes
replies to the person who wrote the mail they answer (`replies`).
"""
