"""The multi-host layer: readiness, the status channel between hosts, and its session.

One module per role; imports go one way, from the bottom up::

    wire.py        the message format: one JSON object per line, bounded
    probe.py       is a host reachable? DNS, TCP connects, backoff, a bounded pool of probes
    hub.py         this host's status port: one thread, one selector, every connection
                   (the master's members, rank wrappers' reports, readiness probes)
    link.py        a member's one connection to the master (connect with backoff, both ways)
    session.py     the lifecycle: join -> ready -> wait -> settle -> close; the first failure
                   stops every host; the root cause is reported everywhere
    readiness.py   what each launch plan waits for, before it runs

``train`` owns the session (:func:`smtk.cluster.session.join`) and hands it to what needs
it; nothing here keeps state at module level. Importing this package imports nothing
else: a rank wrapper that only reports its failure loads ``wire`` alone.
"""
