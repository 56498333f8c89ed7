"""The fruit-recognition page that `orchard serve` serves at `/`: plain HTML, CSS and JavaScript files."""
