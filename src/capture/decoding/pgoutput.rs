//! The `pgoutput` plugin's messages (protocol version 1), taken apart: what a slot read
//! with `pg_logical_slot_get_binary_changes` returns, or what a replication stream's
//! XLogData carries. Values come as text, each as its type's output function wrote it.

use super::DecodeError;

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value an UPDATE left as it was: `pgoutput` does not send it again. The
    /// old tuple has it when the table's replica identity is FULL.
    Unchanged,
    Text(String),
}

/// A row's values, in the relation's column order (dropped and generated columns are
/// not sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// A table as the decoder saw it when the change was written: sent before its first
/// change in a stream and again after each change of its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub identity: u8,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// The commit record's position.
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        end_lsn: u64,
        commit_time_micros: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        /// The old row: the key columns when the key changed, the whole row under
        /// replica identity FULL, none otherwise.
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    /// Truncate, Type, Origin and logical messages: nothing a log row is made of.
    Other(u8),
}

/// Takes one message apart.
pub fn parse(data: &[u8]) -> Result<Message, DecodeError> {
    let mut c = Cursor(data);
    let message = match c.u8()? {
        b'B' => Message::Begin {
            final_lsn: c.u64()?,
            commit_time_micros: c.u64()? as i64,
            xid: c.u32()?,
        },
        b'C' => {
            c.u8()?;
            c.u64()?;
            Message::Commit {
                end_lsn: c.u64()?,
                commit_time_micros: c.u64()? as i64,
            }
        }
        b'R' => {
            let id = c.u32()?;
            let schema = c.cstr()?.to_owned();
            let name = c.cstr()?.to_owned();
            let identity = c.u8()?;
            let n = c.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                c.u8()?;
                columns.push(c.cstr()?.to_owned());
                c.take(8)?;
            }
            Message::Relation(Relation {
                id,
                schema,
                name,
                identity,
                columns,
            })
        }
        b'I' => {
            let relation = c.u32()?;
            c.expect(b'N')?;
            Message::Insert {
                relation,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let relation = c.u32()?;
            let mut kind = c.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(c.tuple()?);
                kind = c.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!(
                    "an update without a new row ({:?})",
                    kind as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relation = c.u32()?;
            match c.u8()? {
                b'K' | b'O' => {}
                k => {
                    return Err(DecodeError(format!(
                        "a delete without its old row ({:?})",
                        k as char
                    )))
                }
            }
            Message::Delete {
                relation,
                old: c.tuple()?,
            }
        }
        tag @ (b'T' | b'Y' | b'O' | b'M') => Message::Other(tag),
        tag => return Err(DecodeError(format!("unknown message {:?}", tag as char))),
    };
    Ok(message)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("a message cut short".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError("a name without its end".into()))?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| DecodeError("a name that is not UTF-8".into()))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn expect(&mut self, tag: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(DecodeError(format!(
                "{:?} where {:?} was due",
                t as char, tag as char
            ))),
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16()? as usize;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let text = std::str::from_utf8(self.take(len)?)
                        .map_err(|_| DecodeError("a value that is not UTF-8".into()))?;
                    Datum::Text(text.to_owned())
                }
                k => {
                    return Err(DecodeError(format!(
                        "a value of kind {:?} (binary values are not asked for)",
                        k as char
                    )))
                }
            });
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A Relation message for `public.<name>` with text columns `columns`.
    pub fn relation(id: u32, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(b"public\0");
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(&[0, b'f']);
        m.extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for c in columns {
            m.push(0);
            m.extend_from_slice(c.as_bytes());
            m.extend_from_slice(&[0, 0, 0, 0, 25, 255, 255, 255, 255]);
        }
        m
    }

    /// A tuple's bytes: `None` null, `Some("\u{0}")` unchanged, else text.
    pub fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut m = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => m.push(b'n'),
                Some("\u{0}") => m.push(b'u'),
                Some(t) => {
                    m.push(b't');
                    m.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    m.extend_from_slice(t.as_bytes());
                }
            }
        }
        m
    }

    #[test]
    fn a_relation_and_its_changes_are_taken_apart() {
        let Message::Relation(r) = parse(&relation(7, "t", &["id", "body"])).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(
            (r.id, r.schema.as_str(), r.name.as_str()),
            (7, "public", "t")
        );
        assert_eq!(r.columns, ["id", "body"]);

        let mut ins = vec![b'I', 0, 0, 0, 7, b'N'];
        ins.extend(tuple(&[Some("42"), None]));
        assert_eq!(
            parse(&ins).unwrap(),
            Message::Insert {
                relation: 7,
                new: Tuple(vec![Datum::Text("42".into()), Datum::Null]),
            }
        );

        let mut upd = vec![b'U', 0, 0, 0, 7, b'O'];
        upd.extend(tuple(&[Some("42"), Some("long")]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("42"), Some("\u{0}")]));
        let Message::Update { old, new, .. } = parse(&upd).unwrap() else {
            panic!("not an update");
        };
        assert_eq!(old.unwrap().0[1], Datum::Text("long".into()));
        assert_eq!(new.0[1], Datum::Unchanged);

        let mut del = vec![b'D', 0, 0, 0, 7, b'K'];
        del.extend(tuple(&[Some("42"), None]));
        assert!(matches!(
            parse(&del).unwrap(),
            Message::Delete { relation: 7, .. }
        ));
    }

    #[test]
    fn begin_and_commit_carry_their_positions() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10u64.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            parse(&b).unwrap(),
            Message::Begin {
                final_lsn: 0x10,
                commit_time_micros: 5,
                xid: 9
            }
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&0x10u64.to_be_bytes());
        c.extend_from_slice(&0x18u64.to_be_bytes());
        c.extend_from_slice(&5i64.to_be_bytes());
        assert_eq!(
            parse(&c).unwrap(),
            Message::Commit {
                end_lsn: 0x18,
                commit_time_micros: 5
            }
        );
    }

    #[test]
    fn cut_or_unknown_messages_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[b'I', 0, 0]).is_err());
        assert!(parse(&[b'I', 0, 0, 0, 7, b'X']).is_err());
        assert!(parse(b"Z").is_err());
        // A binary value, which the reader never asks for.
        assert!(parse(&[b'I', 0, 0, 0, 7, b'N', 0, 1, b'b', 0, 0, 0, 0]).is_err());
        // A value longer than what is left.
        assert!(parse(&[b'I', 0, 0, 0, 7, b'N', 0, 1, b't', 0, 0, 0, 9, b'x']).is_err());
        assert!(parse(&[b'U', 0, 0, 0, 7, b'K', 0, 0, b'X']).is_err());
    }
}
