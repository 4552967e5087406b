"""Key-Value Pair exchange (Hyper-V "Data Exchange").

:mod:`vmis.services.kvp.pool` is the one implementation of the Linux
hyperv-daemons pool-file format (``/var/lib/hyperv/.kvp_pool_N``); the Hyper-V
KVP daemon (:mod:`vmis.hyperv.kvp`) and the vmis KVP service both store their
guest pools through it, so either can read what the other wrote.
"""
