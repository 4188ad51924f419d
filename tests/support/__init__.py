"""Support code of the test suite: tiny networks (``nets``), the context and role builders (``context``), a toy
Stable-Diffusion pipeline folder (``image``), and the drivers that tests start in subprocesses."""
