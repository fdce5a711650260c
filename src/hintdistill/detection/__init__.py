"""Detection pieces: box arithmetic, k-means anchors, YOLO target assignment, YOLO loss, mAP evaluation."""
