"""The pages under /ui/: sessions, formatting, charts, templates."""
