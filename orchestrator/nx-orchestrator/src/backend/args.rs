//! A program's arguments as it receives them: `$PORT` and `${PORT}` replaced by its port (the
//! Procfile convention: there is no shell in a sandbox to expand them), `$$` for a literal
//! `$`. Any other `$` stays as it is, so `$PORTS` or `$HOME` are passed literally.

/// Expands `$PORT`, `${PORT}` and `$$` in each argument.
pub fn expand_port(args: &[String], port: u16) -> Vec<String> {
    let port = port.to_string();
    expand(args, |name| (name == "PORT").then(|| port.clone()))
}

/// Expands, in each argument, `$NAME` and `${NAME}` (NAME: a letter or `_`, then letters,
/// digits and `_`: the longest such run) to `value(NAME)`, and `$$` to `$`. A name `value`
/// does not know (None), an unclosed `${` and a lone `$` stay as written.
pub fn expand(args: &[String], value: impl Fn(&str) -> Option<String>) -> Vec<String> {
    args.iter().map(|arg| expand_one(arg, &value)).collect()
}

fn expand_one(arg: &str, value: &impl Fn(&str) -> Option<String>) -> String {
    let name_len = |s: &str| {
        if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return 0;
        }
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        // (the name, what follows the reference)
        let reference = match after.strip_prefix('{') {
            Some(braced) => {
                let n = name_len(braced);
                braced[n..]
                    .strip_prefix('}')
                    .filter(|_| n > 0)
                    .map(|tail| (&braced[..n], tail))
            }
            None => {
                let n = name_len(after);
                (n > 0).then(|| (&after[..n], &after[n..]))
            }
        };
        match reference.and_then(|(name, tail)| Some((value(name)?, tail))) {
            Some((text, tail)) => {
                out.push_str(&text);
                rest = tail;
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{expand, expand_port};

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

    #[test]
    fn any_known_name_is_replaced_and_unknown_ones_stay() {
        let env = |name: &str| match name {
            "HOST" => Some("0.0.0.0".to_owned()),
            "A_1" => Some("x".to_owned()),
            _ => None,
        };
        let out = expand(
            &["$HOST:${A_1}-$A_1b $NOPE ${HOST ${} $1 $_".to_owned()],
            env,
        );
        assert_eq!(out, ["0.0.0.0:x-$A_1b $NOPE ${HOST ${} $1 $_"]);
    }
}
