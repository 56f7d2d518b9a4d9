//! A very small `sh -c` language for the built-in commands: words with
//! quotes, escapes and `$VAR` / `${VAR}` / `$?` / `$1` expansion, the
//! separators `;`, newline, `&&` and `||`, and the redirections `>&2`,
//! `2>&1`, `> FILE`, `>> FILE` and `2> FILE`. Pipes, globs, subshells and
//! control flow are not supported (they are reported as syntax errors).

use std::collections::HashMap;

/// Where one of a command's outputs goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The shell's stdout.
    Stdout,
    /// The shell's stderr.
    Stderr,
    /// A file, truncated first unless appending.
    File { path: String, append: bool },
}

/// One simple command with its redirections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Simple {
    /// The words after expansion.
    pub argv: Vec<String>,
    /// Where stdout goes.
    pub stdout: Target,
    /// Where stderr goes.
    pub stderr: Target,
}

/// How a command is joined to the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Connector {
    /// `;` or a newline: always run.
    Always,
    /// `&&`: run if the previous one succeeded.
    And,
    /// `||`: run if the previous one failed.
    Or,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Sep(Connector),
    /// `>` or `>>` (with the fd it applies to).
    Redirect {
        fd: u8,
        append: bool,
    },
    /// `N>&M`.
    Dup {
        fd: u8,
        to: u8,
    },
}

/// Variables for expansion.
pub(crate) struct Vars<'a> {
    /// Environment and shell variables.
    pub env: &'a HashMap<String, String>,
    /// `$0`, `$1`, ...
    pub positional: &'a [String],
    /// `$?`.
    pub status: i32,
}

impl Vars<'_> {
    fn lookup(&self, name: &str) -> String {
        if name == "?" {
            return self.status.to_string();
        }
        if let Ok(i) = name.parse::<usize>() {
            return self.positional.get(i).cloned().unwrap_or_default();
        }
        if name == "#" {
            return self.positional.len().saturating_sub(1).to_string();
        }
        self.env.get(name).cloned().unwrap_or_default()
    }
}

fn var_name(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    match chars.peek().copied() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    return Some(name);
                }
                name.push(c);
            }
            None
        }
        Some(c) if c == '?' || c == '#' || c.is_ascii_digit() => {
            chars.next();
            Some(c.to_string())
        }
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            Some(name)
        }
        _ => None,
    }
}

fn tokenize(script: &str, vars: &Vars<'_>) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    // A word exists even when empty ("" or '').
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let flush = |tokens: &mut Vec<Token>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            tokens.push(Token::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => flush(&mut tokens, &mut word, &mut in_word),
            '\n' | ';' => {
                flush(&mut tokens, &mut word, &mut in_word);
                tokens.push(Token::Sep(Connector::Always));
            }
            '#' if !in_word => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '&' => {
                flush(&mut tokens, &mut word, &mut in_word);
                if chars.next_if_eq(&'&').is_some() {
                    tokens.push(Token::Sep(Connector::And));
                } else {
                    return Err("background jobs (&) are not supported".into());
                }
            }
            '|' => {
                flush(&mut tokens, &mut word, &mut in_word);
                if chars.next_if_eq(&'|').is_some() {
                    tokens.push(Token::Sep(Connector::Or));
                } else {
                    return Err("pipes (|) are not supported".into());
                }
            }
            '>' => {
                let fd = if in_word && (word == "1" || word == "2") {
                    let fd = if word == "2" { 2 } else { 1 };
                    word.clear();
                    in_word = false;
                    fd
                } else {
                    flush(&mut tokens, &mut word, &mut in_word);
                    1
                };
                if chars.next_if_eq(&'&').is_some() {
                    match chars.next() {
                        Some('1') => tokens.push(Token::Dup { fd, to: 1 }),
                        Some('2') => tokens.push(Token::Dup { fd, to: 2 }),
                        _ => return Err("only >&1 and >&2 are supported".into()),
                    }
                } else {
                    let append = chars.next_if_eq(&'>').is_some();
                    tokens.push(Token::Redirect { fd, append });
                }
            }
            '<' | '(' | ')' | '`' => return Err(format!("{c:?} is not supported")),
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted string".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated quoted string".into()),
                        },
                        Some('$') => match var_name(&mut chars) {
                            Some(name) => word.push_str(&vars.lookup(&name)),
                            None => word.push('$'),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted string".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => word.push(c),
                }
            }
            '$' => {
                in_word = true;
                match var_name(&mut chars) {
                    Some(name) => word.push_str(&vars.lookup(&name)),
                    None => word.push('$'),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut tokens, &mut word, &mut in_word);
    Ok(tokens)
}

/// Parses a script into commands, each with how it joins the previous one.
pub(crate) fn parse(script: &str, vars: &Vars<'_>) -> Result<Vec<(Connector, Simple)>, String> {
    let mut out = Vec::new();
    let mut connector = Connector::Always;
    let mut current = Simple { argv: Vec::new(), stdout: Target::Stdout, stderr: Target::Stderr };
    let mut tokens = tokenize(script, vars)?.into_iter();
    let mut finish = |connector: Connector, current: &mut Simple| -> Result<(), String> {
        let cmd = std::mem::replace(
            current,
            Simple { argv: Vec::new(), stdout: Target::Stdout, stderr: Target::Stderr },
        );
        if cmd.argv.is_empty() {
            if connector != Connector::Always {
                return Err("syntax error: missing command".into());
            }
            return Ok(());
        }
        out.push((connector, cmd));
        Ok(())
    };
    while let Some(t) = tokens.next() {
        match t {
            Token::Word(w) => current.argv.push(w),
            Token::Sep(next) => {
                if current.argv.is_empty() && next != Connector::Always {
                    return Err("syntax error near && or ||".into());
                }
                finish(connector, &mut current)?;
                connector = next;
            }
            Token::Redirect { fd, append } => {
                let Some(Token::Word(path)) = tokens.next() else {
                    return Err("syntax error: redirection without a file".into());
                };
                let target = if path == "/dev/stderr" {
                    Target::Stderr
                } else if path == "/dev/stdout" {
                    Target::Stdout
                } else {
                    Target::File { path, append }
                };
                if fd == 2 {
                    current.stderr = target;
                } else {
                    current.stdout = target;
                }
            }
            Token::Dup { fd, to } => {
                let target = if to == 2 { current.stderr.clone() } else { current.stdout.clone() };
                if fd == 2 {
                    current.stderr = target;
                } else {
                    current.stdout = target;
                }
            }
        }
    }
    if current.argv.is_empty() && connector != Connector::Always {
        return Err("syntax error: unexpected end of script".into());
    }
    finish(connector, &mut current)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(script: &str) -> Vec<(Connector, Simple)> {
        let env = HashMap::from([("HOME".to_string(), "/root".to_string())]);
        let args = ["sh".to_string(), "one".to_string()];
        parse(script, &Vars { env: &env, positional: &args, status: 3 }).expect("parse")
    }

    fn argv(cmds: &[(Connector, Simple)]) -> Vec<Vec<&str>> {
        cmds.iter().map(|(_, s)| s.argv.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn words_quotes_and_variables() {
        let cmds = p(r#"echo 'a b' "c $HOME" d\ e $? ${1} "" '$HOME'"#);
        assert_eq!(argv(&cmds), [vec!["echo", "a b", "c /root", "d e", "3", "one", "", "$HOME"]]);
    }

    #[test]
    fn separators_and_redirections() {
        let cmds = p("true && echo x >&2; false || exit 4\necho y > /tmp/f 2>&1 # comment");
        assert_eq!(
            argv(&cmds),
            [vec!["true"], vec!["echo", "x"], vec!["false"], vec!["exit", "4"], vec!["echo", "y"]]
        );
        assert_eq!(cmds[1].0, Connector::And);
        assert_eq!(cmds[1].1.stdout, Target::Stderr);
        assert_eq!(cmds[3].0, Connector::Or);
        let f = Target::File { path: "/tmp/f".into(), append: false };
        assert_eq!((&cmds[4].1.stdout, &cmds[4].1.stderr), (&f, &f));
        assert_eq!(p("echo a 2>>log")[0].1.stderr, Target::File { path: "log".into(), append: true });
    }

    #[test]
    fn unsupported_syntax_is_an_error() {
        let env = HashMap::new();
        let vars = Vars { env: &env, positional: &[], status: 0 };
        for bad in ["a | b", "a &", "echo 'x", "&& a", "a &&", "(a)"] {
            assert!(parse(bad, &vars).is_err(), "{bad}");
        }
    }
}
