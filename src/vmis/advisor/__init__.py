"""The update advisor: which mechanism keeps a guest's integration services up to date.

Hyper-V answers this with three tables, one per host generation (the article
*Manage Hyper-V Integration Services*, section "Keep integration services up
to date"): Windows Update, the Integration Services disk, or the Linux
distribution's package manager, with notes (Data Exchange needed, a CAB file
where it cannot be enabled, unsupported and extended-support-only guests).
Those tables are data, checked in as ``vmis/data/update_paths.toml`` with
their provenance (which translation, which table and row, how the
translations differ); vmis's own answers for vmis hosts and vmis guests sit
beside them there. This package only reads that file and answers
(``vmis Get-VMIntegrationServicesUpdatePath``, docs/updates.md).

Standard library only, and nothing of vmis but its errors; no I/O but
reading the data file once.

``advisor``   :class:`~vmis.advisor.advisor.Advisor` and its shortcuts: the answers
``answers``   :class:`~vmis.advisor.answers.Advice`, its source and support level
``datafile``  the data file, validated into frozen records
``names``     OS names as typed, reduced to lookup keys; wildcards; close names
"""
