module glowplug.dev/images/pause

go 1.25.0
