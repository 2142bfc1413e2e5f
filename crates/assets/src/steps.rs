//! The boot script's protocol: step names, marker lines, on-node paths (filled in below).
