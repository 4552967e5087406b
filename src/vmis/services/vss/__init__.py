"""Volume Shadow Copy (backup) support: freezing and thawing guest filesystems.

:mod:`vmis.services.vss.freeze` is the one implementation of filesystem
freezing in vmis; the Hyper-V VSS daemon (:mod:`vmis.hyperv.vss`) and the vmis
VSS service both freeze through it.
"""
