//! A program's arguments and environment as it receives them: `$NAME` and `${NAME}` replaced
//! by the variable's value (the Procfile convention: there is no shell in a sandbox to expand
//! them; so `-- --listen ':$PORT'` or `-e ATUIN_DB_URI='$DATABASE_URL'`), `$$` for a literal
//! `$`. A name the environment does not have stays as written, so `$PORTS` is passed
//! literally.

use std::collections::BTreeMap;

/// The environment a deployment starts with: `nx_env` (NX's own variables: PORT, HOST,
/// DATABASE_URL, the PG* ones, NX_*, a bundle's LD_LIBRARY_PATH, ...) overlaid with `user`'s
/// (`nx push -e`, `nx sandbox set -e`), whose values have their references expanded. A
/// reference means NX's variable of that name where NX sets one (so `-e PATH='$PATH:/app/bin'`
/// extends NX's PATH), else the user's variable as written (user values are not expanded
/// twice, so nothing can loop).
pub fn environment(
    nx_env: BTreeMap<String, String>,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let lookup = |name: &str| nx_env.get(name).or_else(|| user.get(name)).cloned();
    let expanded: Vec<(String, String)> = user
        .iter()
        .map(|(k, v)| (k.clone(), expand_one(v, &lookup)))
        .collect();
    let mut env = nx_env;
    env.extend(expanded);
    env
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
    use super::{environment, expand};
    use std::collections::BTreeMap;

    fn one(arg: &str) -> String {
        expand(&[arg.to_owned()], |name| {
            (name == "PORT").then(|| "8080".to_owned())
        })
        .remove(0)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn user_values_refer_to_nx_variables_first_then_to_the_users_as_written() {
        let nx = map(&[
            ("PORT", "8080"),
            ("DATABASE_URL", "postgres:///x"),
            ("PATH", "/usr/bin"),
        ]);
        let user = map(&[
            ("ATUIN_DB_URI", "$DATABASE_URL"),
            ("PATH", "$PATH:/app/bin"),
            ("LISTEN", "0.0.0.0:${PORT}"),
            ("A", "[$B]"),
            ("B", "<$A>"),
            ("SELF", "$SELF"),
            ("PRICE", "$$5 $NOPE"),
        ]);
        let env = environment(nx, &user);
        assert_eq!(env["ATUIN_DB_URI"], "postgres:///x");
        assert_eq!(env["PATH"], "/usr/bin:/app/bin");
        assert_eq!(env["LISTEN"], "0.0.0.0:8080");
        assert_eq!(env["A"], "[<$A>]");
        assert_eq!(env["B"], "<[$B]>");
        assert_eq!(env["SELF"], "$SELF");
        assert_eq!(env["PRICE"], "$5 $NOPE");
        assert_eq!(env["DATABASE_URL"], "postgres:///x");
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
