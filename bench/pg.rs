//! A fresh PostgreSQL database per benchmark run (on `AGENTPLANE_TEST_PG_URL`), migrated as
//! the owner, dropped afterwards.

use anyhow::{Context, Result};

/// A fresh PostgreSQL database, migrated by its owner (the admin URL's role).
pub struct PgDb {
    name: String,
    pub url: String,
}

fn pg_admin_url() -> String {
    std::env::var("AGENTPLANE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl PgDb {
    pub async fn create() -> Result<PgDb> {
        use sqlx::Connection;
        let admin = pg_admin_url();
        let name = format!("ap_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.with_context(|| {
            format!("PostgreSQL is unreachable at {admin} (AGENTPLANE_TEST_PG_URL)")
        })?;
        // `name` is generated here: letters, digits and underscores only.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        let (base, _) = admin
            .rsplit_once('/')
            .context("AGENTPLANE_TEST_PG_URL must end with /<database>")?;
        let db = PgDb {
            url: format!("{base}/{name}"),
            name,
        };
        if let Err(e) = agentplane_store::PgStore::migrate(&db.url).await {
            db.drop_database().await.ok();
            return Err(e.into());
        }
        Ok(db)
    }

    pub async fn drop_database(self) -> Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await.ok();
        Ok(())
    }
}
