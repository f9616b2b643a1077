"""Index sets of mediapipe's face mesh (478 points with the iris refinement), kept literal so that importing them
needs no mediapipe.

Single points are named from the person's side: the right eye is the one on the image's left.
"""

N_LANDMARKS = 478

# single points
FOREHEAD, CHIN = 10, 152
NOSE_TIP = 1
CHEEK_R, CHEEK_L = 234, 454
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14  # the inner lips' midpoints: the mouth's opening
MOUTH_BOX = (61, 291, 0, 17)
"""The mouth corners (right, left) and the outer lips' top and bottom midpoints: the mouth's box."""

# closed rings (mediapipe's face_mesh_connections)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LIPS = tuple(sorted(LIPS_OUTER + LIPS_INNER))
"""Both lip rings, sorted (mediapipe's FACEMESH_LIPS)."""

# open contours, corner to corner
UPPER_INNER_LIP_CONTOUR = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP_CONTOUR = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYE_LIDS = (  # (upper lid, lower lid) of the right eye, then of the left eye
    ((33, 246, 161, 160, 159, 158, 157, 173, 133), (33, 7, 163, 144, 145, 153, 154, 155, 133)),
    ((362, 398, 384, 385, 386, 387, 388, 466, 263), (362, 382, 381, 380, 374, 373, 390, 249, 263)),
)
