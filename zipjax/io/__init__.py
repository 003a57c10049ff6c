"""Host-side I/O: files, JSON, COCO records and RLE masks. The only package that touches files and RLE."""
