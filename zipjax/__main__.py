import sys

try:
  from zipjax.cli import main
except KeyboardInterrupt:  # Ctrl-C while the package (jax, flax) is still importing
  print("\nzipjax: interrupted", file=sys.stderr)
  raise SystemExit(130) from None

if __name__ == "__main__":
  raise SystemExit(main())
