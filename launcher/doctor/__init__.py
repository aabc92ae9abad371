"""`launcher doctor`: what this host has and lacks for a backend, with what to do about it.

`checks` turns the host's facts into findings for a backend; `hostfacts` reads the facts
(NVML, interfaces, fixed probe programs run through `procs.capture`); `findings` holds the
finding types and their table and JSON renderings. Starts no rank and imports no framework.
"""
