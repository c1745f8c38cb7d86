"""Step-size control, for the scalar and the per-sample clock alike: the controllers and the initial step
(``controller``), the error norms (``norms``: RMS, the adjoint's seminorms, user norms) and the detection of
stiffness that stops an explicit method held at its stability limit (``stiffness``)."""
