"""The on-device benchmark agent: what runs on the device, and nothing else.

This package is copied to devices (as a self-contained zipapp, see ``bundle.py``) where edgekit itself is
not installed, and a Raspberry Pi may have Python 3.9 and an old numpy. So its modules use only the
standard library, numpy and whichever runtime is installed, import nothing from ``edgekit`` outside this
package (relative imports only), and stay Python 3.9 compatible.

Keep this file free of imports: the host imports ``edgekit.agent.bundle`` and must not pull numpy or a
runtime in by doing so.

Entry point: ``python -m edgekit.agent run --request REQ.json`` prints one JSON object on stdout.
"""
