//! A program's arguments as it receives them: `$PORT` and `${PORT}` replaced by its port (the
//! Procfile convention: there is no shell in a sandbox to expand them), `$$` for a literal
//! `$`. Any other `$` stays as it is, so `$PORTS` or `$HOME` are passed literally.

/// Expands `$PORT`, `${PORT}` and `$$` in each argument.
pub fn expand_port(args: &[String], port: u16) -> Vec<String> {
    args.iter().map(|arg| expand(arg, port)).collect()
}

fn expand(arg: &str, port: u16) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_ends = |s: &str| !s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("{PORT}") {
            out.push_str(&port.to_string());
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("PORT").filter(|t| name_ends(t)) {
            out.push_str(&port.to_string());
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand_port;

    fn one(arg: &str) -> String {
        expand_port(&[arg.to_owned()], 8080).remove(0)
    }

    #[test]
    fn port_references_are_replaced_and_dollars_escaped() {
        assert_eq!(one("--listen=:$PORT"), "--listen=:8080");
        assert_eq!(one("127.0.0.1:${PORT}/x"), "127.0.0.1:8080/x");
        assert_eq!(one("$PORT$PORT"), "80808080");
        assert_eq!(one("cost: $$5"), "cost: $5");
        assert_eq!(one("$$PORT"), "$PORT");
        assert_eq!(one("$PORTS $HOME ${HOME} $"), "$PORTS $HOME ${HOME} $");
        assert_eq!(one("plain"), "plain");
        assert_eq!(one("ünïcode:$PORT"), "ünïcode:8080");
    }
}
