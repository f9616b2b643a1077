"""The code-conditioned dynamic NeRF (head and torso fields, joint volume rendering); built by the renderer issue."""
