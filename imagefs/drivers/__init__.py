"""Image service drivers.

A driver speaks to one image service and raises only ``imagefs.errors``.
All methods are blocking; the mount calls them from worker threads.  The
``Driver`` protocol in ``base`` lists what each must do; ``API`` adds
retries, verification and the documented semantics on top.
"""
