-- Scalar macros shared by the SQL models.

-- Parse a numeric id written as text ('6037', '06037', '06037.0') and pad it
-- to `width` digits; NULL when it is not an integer or has too many digits.
CREATE OR REPLACE MACRO normalise_numeric_id(raw, width) AS (
    CASE
        WHEN regexp_full_match(trim(raw), '\+?[0-9]+(\.0*)?')
             AND length(ltrim(regexp_replace(trim(raw), '^\+|\.0*$', '', 'g'), '0')) <= width
        THEN lpad(
            coalesce(nullif(ltrim(regexp_replace(trim(raw), '^\+|\.0*$', '', 'g'), '0'), ''), '0'),
            width, '0')
    END
);
