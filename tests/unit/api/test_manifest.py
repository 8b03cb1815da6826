"""The manifest template and the send-time script's settings, without a daemon."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from gateway.api.addin import js_pattern
from gateway.api.manifest import AddinInfo, manifest_version, render

NS = {"o": "http://schemas.microsoft.com/office/appforoffice/1.1"}


def test_names_with_markup_stay_well_formed():
    info = AddinInfo("https://gw.example.dk/sikker", "82c42fe1-1b56-4240-b588-b826a6a50405",
                     'Kommune A & B <"Øst">')
    root = ET.fromstring(render(info))
    assert root.findtext("o:ProviderName", namespaces=NS) == 'Kommune A & B <"Øst">'
    assert root.find("o:Description", NS).get("DefaultValue").endswith('<"Øst">s sikre mail.')
    assert root.find("o:SupportUrl", NS).get("DefaultValue") == "https://gw.example.dk/sikker/"


def test_version_has_four_parts():
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", manifest_version())


def test_subject_pattern_in_javascript_syntax():
    assert js_pattern(re.compile(r"(?P<keyword>[A-Za-z0-9._-]+)%%")) == \
        "(?<keyword>[A-Za-z0-9._-]+)%%"
