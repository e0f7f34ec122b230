"""The host side of ONE device: the agent client (``client``: install, info, run, validation of the
device's untrusted answer), measuring artifacts there (``measure``: ``benchmark``, ``measure_on``) and
``check`` (``check_device``).

Below ``fleet`` (which drives many devices through it), above ``results`` (the rows it produces). The
package namespace stays empty so that ``import edgekit`` does not pull pandas in through it."""
