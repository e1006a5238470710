"""The pages under /ui/: sessions, the gate, formatting, rendering, charts, the pages."""
